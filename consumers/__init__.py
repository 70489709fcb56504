"""Everything downstream of the stream: the dialer's suppression check."""
