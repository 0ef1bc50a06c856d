"""Data layer: the byte-level BPE tokenizer, styles.jsonl, plain text, preference and prompt
readers, the bundled sample corpus, sequence formatting and the resumable batch loader. Import the
submodules directly (``from core.data.tokenizer import AeronTokenizer``)."""
