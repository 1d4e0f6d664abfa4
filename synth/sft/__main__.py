"""``python -m synth.sft``: the SFT data stage (``synth.sft.stage``); ``--help`` lists every method's settings."""

from synth.sft.stage import main

if __name__ == "__main__":
    raise SystemExit(main())
