"""Stage 2: data/checkpoint (Hugging Face) -> data/model (our config + safetensors state dict)."""

from pathlib import Path

from longformer.checkpoint import save_converted
from longformer.cli import app, user_errors
from longformer.convert import convert_hf_checkpoint
from longformer.params import load_params

cli = app(__doc__)


@cli.command()
@user_errors
def main(params: Path = Path("params.yaml"), checkpoint: Path = Path("data/checkpoint"),
         out: Path = Path("data/model")) -> None:
    """Convert a Hugging Face Longformer, BERT or RoBERTa checkpoint into our model's config and state dict: a BERT
    or RoBERTa becomes a Longformer of model.max_length tokens and model.attention_window windows."""
    config, state = convert_hf_checkpoint(checkpoint, **load_params(params).model.conversion())
    save_converted(config, state, out)
    print(f"{checkpoint} -> {out}: {config.num_layers} layers, hidden {config.hidden_size}, "
          f"windows {sorted(set(config.attention_window))}, {config.max_length} tokens, "
          f"{sum(t.numel() for t in state.values()) / 1e6:.1f}M parameters")


if __name__ == "__main__":
    cli()
