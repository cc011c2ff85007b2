"""voxcli: live, local speech-to-text with Mistral's Voxtral models.

The engine is usable without the CLI::

    from voxcli.engine import load_engine
    engine = load_engine("mistralai/Voxtral-Mini-4B-Realtime-2602")
    for event in engine.transcribe(samples_16k_mono):
        print(event.text, end="", flush=True)
"""

__version__ = "0.1.0"
