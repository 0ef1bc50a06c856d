"""Data layer: styles.jsonl, plain text, preference and prompt readers, the bundled sample corpus,
sequence formatting and the resumable batch loader. Import the submodules directly."""
