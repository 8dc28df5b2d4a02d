"""Stage 2: data/checkpoint (Hugging Face) -> data/model (our config + safetensors state dict)."""

from pathlib import Path

from longformer import weights
from longformer.errors import written_by
from longformer.hf import convert_hf_checkpoint
from longformer.pipeline.cli import app, user_errors
from longformer.pipeline.params import load_params

cli = app(__doc__)


@cli.command()
@user_errors
def main(params: Path = Path("params.yaml"), checkpoint: Path = Path("data/checkpoint"),
         out: Path = Path("data/model")) -> None:
    """Convert a Hugging Face Longformer, BERT or RoBERTa checkpoint into our format (config + safetensors, and its
    masked-LM head where it ships one): a BERT or RoBERTa becomes a Longformer of model.max_length tokens and
    model.attention_window windows."""
    conversion = load_params(params).model.conversion()
    with written_by("download"):
        config, state, lm_head = convert_hf_checkpoint(checkpoint, **conversion)
    weights.save(out, config, state, lm_head=lm_head)
    print(f"{checkpoint} -> {out}: {config.num_layers} layers, hidden {config.hidden_size}, "
          f"windows {sorted(set(config.attention_window))}, {config.max_length} tokens, "
          f"{sum(t.numel() for t in state.values()) / 1e6:.1f}M parameters; "
          + ("its masked-LM head kept" if lm_head else "no masked-LM head in the checkpoint"))


if __name__ == "__main__":
    cli()
