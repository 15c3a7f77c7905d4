"""The one generic trainer every objective plugs into."""
