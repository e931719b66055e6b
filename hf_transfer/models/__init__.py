"""Models: one interface over timm and transformers backbones, the foldable bottleneck head, LoRA
adapters through PEFT, memory format / precision choices, and the Hub-ready folder a model is saved as.

Above ``data`` only: nothing here imports methods, training or hub."""
