"""JSON-LD handling: context resolution and fast term expansion/compaction."""
