"""LoRA adapters in the native engine: PEFT files -> padded blocks -> batched slots."""
