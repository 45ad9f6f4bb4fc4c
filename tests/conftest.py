"""Shared fixtures. Tiny random-weight encoders keep unit tests fast; tests marked ``slow`` load
the real pip-installed MiniLM encoder."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The registry download cache of this test session only: a user's (or an earlier session's)
# ~/.cache/glidre/registry never serves a test its models (set before Ray starts, so workers inherit it).
import tempfile  # noqa: E402

os.environ["GLIDRE_CACHE"] = tempfile.mkdtemp(prefix="glidre-test-cache-")

import pytest
import torch

from glidre_core import GLiDRE, GLiDREConfig

TINY_BERT = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "vocab_size": 30522,  # the MiniLM tokenizer's vocabulary (used for random encoders)
    "max_position_embeddings": 512,
}


def tiny_config(**overrides) -> GLiDREConfig:
    base = dict(
        encoder=None, encoder_config=TINY_BERT, label_encoder=None, label_encoder_config=TINY_BERT,
        hidden_size=24, dropout=0.0, save_dtype="float32",
        # random heads put many scores next to the threshold: exact fp32 keeps comparisons
        # between code paths exact (bf16 heads are tested on their own in test_precision.py)
        head_precision="float32",
    )
    base.update(overrides)
    return GLiDREConfig(**base)


@pytest.fixture
def tiny_model() -> GLiDRE:
    torch.manual_seed(0)
    model = GLiDRE(tiny_config())
    model.eval()
    return model


@pytest.fixture(scope="session")
def minilm_model() -> GLiDRE:
    """Real pretrained MiniLM encoders with random heads (loaded once per session)."""
    torch.manual_seed(0)
    model = GLiDRE(GLiDREConfig(trainable_encoder_layers=2))
    model.eval()
    return model


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory) -> str:
    """A real MLflow sqlite store shared by the session (creating its tables takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="session")
def ray_session():
    """The one local Ray of the test session (extraction and Ray Train tests share it).

    4 logical CPUs on 2 cores, so an actor pool never starves the read tasks; the dashboard is
    kept because ``include_dashboard=False`` once broke Train V2's cleanup.
    """
    import ray

    os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")
    started = not ray.is_initialized()
    if started:
        ray.init(
            address="local", num_cpus=4, log_to_driver=False,
            runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                                      "TOKENIZERS_PARALLELISM": "false"}},
        )
    yield ray
    if started:
        ray.shutdown()
