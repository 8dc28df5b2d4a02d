"""Stage 2: data/checkpoint (Hugging Face) -> data/model (our config + safetensors state dict)."""

from pathlib import Path

from longformer.checkpoint import save_converted
from longformer.cli import app, user_errors
from longformer.convert import convert_hf_checkpoint

cli = app(__doc__)


@cli.command()
@user_errors
def main(checkpoint: Path = Path("data/checkpoint"), out: Path = Path("data/model")) -> None:
    """Convert a Hugging Face Longformer checkpoint into our model's config and state dict."""
    config, state = convert_hf_checkpoint(checkpoint)
    save_converted(config, state, out)
    params = sum(t.numel() for t in state.values())
    print(f"{checkpoint} -> {out}: {config.num_layers} layers, hidden {config.hidden_size}, "
          f"windows {sorted(set(config.attention_window))}, {params / 1e6:.1f}M parameters")


if __name__ == "__main__":
    cli()
