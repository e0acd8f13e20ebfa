"""Dataset cards (class names and prompt templates) shipped as package data; read them with zeroshot.load_card."""
