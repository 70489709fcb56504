"""Everything that writes opposition events: the publisher, the bulk importer."""
