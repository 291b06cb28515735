"""Where `model.lora.target` puts the adapters (a leaf: the config checks it and `models/lora.py` applies it).

The frozen base blocks (the control branch trains fully, as without LoRA), the control blocks (instead of
training them fully; all else frozen), or both.
"""

LORA_TARGETS = ("base", "control", "base_and_control")
