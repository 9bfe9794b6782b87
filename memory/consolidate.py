"""Consolidation: fact -> two teacher-forced captures -> joint QF solve -> write -> verify.

``QFEditor`` owns the edited layer of one loaded model. By default (``gate`` > 0) the facts live as
key-gated neurons added to that layer's MLP, re-solved jointly from the base model (memory.gated);
with ``gate`` 0 the live weight is ``W0 + dW(all active facts)``, re-solved jointly from W0
(memory.joint), kept in float32 whatever the model's dtype. Computing never mutates the model;
only ``_write`` and ``write_neurons`` do.

Issue-7 options (EditorConfig): ``preserve`` > 0 solves in the K0-preserving metric, whose key
covariance is collected when the first fact is solved (from the model at its base weights: edits
at lower layers would leak into the keys) and cached (memory.preserve); ``gain`` scales the
residual to write (memory.qf); ``focus`` and ``auto_significance`` run the plain pass to the end:
focus keeps only the change of the logits a row is about (memory.focus), automatic significance
drops the rows it already predicts (memory.fact.auto_significance); ``anchors`` adds rows of the
query asked of other subjects, held unchanged (memory.anchors); ``spread`` k writes each fact with
the down_proj matrices of the k layers up to the edited one together (memory.spread), whose keys the
plain pass captures too, at the lower layers' base weights; ``gate`` tau > 0 writes each row's
residual with a new neuron that fires only above cosine tau with the row's key, leaving down_proj
as it is (memory.gated); ``row_gain`` G gives each row the smallest gain up to G that makes its
answer token come first, read off the LM head after the (last) layer (memory.row_gain). What they
decide is stored with the fact's rows or recomputed from them, so the ledger's rebuild and undo
stay exact. Settings left None are decided per layer (memory.answering.with_defaults_decided).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from contextlib import ExitStack
from dataclasses import replace
from typing import NamedTuple

import torch

from memory import architecture as arch
from memory.capture import Capture
from memory.packing import Packed, PrefixCache, pack, prefix_states, template_prefix
from memory.qf2_block import installed as installed_qf2
from memory.delta import LowRankDelta, NonFiniteDeltaError, tensor_sha256, weight_set_to
from memory.anchors import contrast_queries
from memory.contexts import check_contexts, in_contexts
from memory.fact import Fact, FactRows, answer_openings, auto_significance, significance_vector, stack_rows, with_anchors, with_forms
from memory.float32_linear import keep_float32
from memory import gated
from memory.answer_gate import answer_states
from memory.joint import JointQF, Solved, commit
from memory.answering import Answering, Consolidation, ConsolidationError, EditorConfig, with_defaults_decided
from memory.focus import focus_bases
from memory.loading import LoadedModel
from memory.paths import data_dir
from memory.near_questions import QuestionBank
from memory.preserve import (LazyMetric, PreservingMetric, Progress, answer_mean, key_covariance, key_data_pairs,
                             question_bank)
from memory.row_gain import Head
from memory.prompts import Pass, build_pass, instructed_system, render_prompt
from memory.refractory import row_windows
from memory.spread import LowerLayer, spread_layers
from memory.subject_center import subject_mean_questions
from memory.subject_gate import subject_key, subject_position

log = logging.getLogger(__name__)

# How many subjects' means (memory.subject_center) an editor keeps for the next fact about the same subject:
# N floats each (6 KB on the 1.5B), the oldest dropped first.
SUBJECT_MEANS_KEPT = 1024

# record(temporary key, the fact's rows, the solve: the joint delta, or the gated neurons with --gate)
# -> durable key; see QFEditor.learn
Recorder = Callable[[Hashable, FactRows, Solved], Hashable]


class PassRows(NamedTuple):
    """What one capture pass gives at the rows: U (T, D) and V (T, N) at the edited layer, and the keys
    at the lower layers of a spread solve ((k-1, T, D), None with one layer)."""

    U: torch.Tensor
    V: torch.Tensor
    lower: torch.Tensor | None


class QFEditor(Answering):
    def __init__(self, loaded: LoadedModel, config: EditorConfig = EditorConfig(), progress: Progress | None = None):
        super().__init__(loaded, config)
        model = loaded.model
        self.layer = self.layer_for(model, config.layer)
        last = arch.num_layers(model) - 1
        self.given = config  # as given; self.config has its automatic settings decided for this layer
        self.config = config = with_defaults_decided(config, self.layer == last)
        if config.focus and self.layer != last:
            raise ValueError(f"--focus works at the last layer ({last}), not at layer {self.layer}")
        if config.row_gain and (self.layer != last or config.spread > 1):
            raise ValueError(f"--row-gain reads the LM head after the edited layer: it works at the last layer "
                             f"({last}) alone, not with --layer {self.layer} or --spread")
        if config.focus and (config.anchors or config.near_questions):
            raise ValueError("--focus and --anchors / --near-questions do not combine (an anchor has no target to "
                             "focus on); choose one")
        if config.near_questions and config.spread > 1:
            raise ValueError("--near-questions is not combined with --spread (the shipped questions' keys are the "
                             "edited layer's alone); choose one")
        check_contexts(config.contexts)  # refused now, not at the first fact
        if config.subject_gate and not config.gate:
            raise ValueError("--subject-gate lowers the threshold of gated neurons: it needs --gate")
        if config.gate == 1 and not config.subject_gate:
            raise ValueError("--gate 1 fires a fact's neurons only where its subject has been named: it needs "
                             "--subject-gate")
        if config.subject_gate and config.subject_gate > config.gate:
            raise ValueError(f"--subject-gate {config.subject_gate} must not exceed --gate {config.gate} (it is the "
                             "lower threshold the neurons fire above once their subject is named)")
        if config.subject_prime and not config.subject_gate:
            raise ValueError("--subject-prime fires a fact's neurons weakly where its subject is named: it needs "
                             "--subject-gate")
        if config.subject_centered and not config.subject_gate:
            raise ValueError("--subject-centered reads a fact's neurons where its subject is named: it needs "
                             "--subject-gate")
        if config.subject_full and not config.subject_gate:
            raise ValueError("--subject-full fires a fact's neurons at their whole value where its subject is named: "
                             "it needs --subject-gate")
        if config.subject_full and not config.subject_gate < config.subject_full <= 1:
            raise ValueError(f"--subject-full {config.subject_full} must be above --subject-gate {config.subject_gate} "
                             "(where the neurons' ramp begins) and at most 1")
        if config.refractory and not config.gate:
            raise ValueError("--refractory keeps the neurons of --gate from firing on the token they write: it needs --gate")
        if config.answer_gate and not config.gate:
            raise ValueError("--answer-gate gates the neurons of --gate: it needs --gate")
        if config.answer_gate and self.layer != last:
            raise ValueError(f"--answer-gate reads the LM head's input after the edited layer: it works at the last "
                             f"layer ({last}), not at layer {self.layer}")
        if config.gate and (config.spread > 1 or config.soft_anchors or config.near_questions):
            raise ValueError("--gate writes neurons at one layer, keyed by each row's own MLP input: it is not "
                             "combined with --spread, --soft-anchors or --near-questions; choose one")
        self.layers = spread_layers(self.layer, config.spread)  # every layer written, lowest first
        if config.spread > 1 and (config.focus or config.auto_significance):
            raise ValueError("--spread is not combined with --focus or --auto-significance (both read the plain "
                             "pass's predictions at the top layer alone); choose one")
        self.down_name = arch.module_path(model, self.layer, "down_proj")
        self.norm_name = arch.module_path(model, self.layer, "mlp_norm")
        self.parameter = f"{self.down_name}.weight"
        self.lower_names = tuple(arch.module_path(model, layer, "down_proj") for layer in self.layers[:-1])
        lower, self.lower_W0 = [], []
        for layer, name in zip(self.layers, self.lower_names):
            keep_float32(model, name)
            W0_l = model.get_parameter(f"{name}.weight").detach().to("cpu", torch.float32).clone()
            self.lower_W0.append(W0_l)
            metric_l = self._lazy_metric(layer, name, W0_l, progress)
            lower.append((LowerLayer(layer, f"{name}.weight", tensor_sha256(W0_l)), metric_l))
        keep_float32(model, self.down_name)
        W0 = model.get_parameter(self.parameter)
        metric = self._lazy_metric(self.layer, self.down_name, W0, progress)
        self.joint = JointQF(W0, self.parameter, model=loaded.name, layer=self.layer, ridge=config.ridge, metric=metric,
                            gain=config.gain, max_condition=config.condition, lower=tuple(lower),
                            anchor_weight=config.soft_anchors, head=self._head() if config.row_gain else None,
                            max_row_gain=config.row_gain, steer_margin=config.steer)
        self.delta: LowRankDelta = self.joint.solve()
        # With a gate, facts are written as key-gated neurons on the layer's MLP instead (memory.gated).
        self.mlp_name = arch.module_path(model, self.layer, "mlp")
        self.mlp = model.get_submodule(self.mlp_name)
        self._progress = progress
        self.gated = gated.GatedMemory(
            W0.shape[0], config.gate, tau_named=config.subject_gate, answer_tau=config.answer_gate,
            answer_mean=self._answer_mean() if config.answer_gate else None,
            prime=config.subject_prime, subject_centered=config.subject_centered,
            full=config.subject_full or 1.0, refractory=config.refractory) if config.gate else None
        self.neurons = self.gated.solve() if self.gated is not None else None
        self._next_key = 0
        self._bank: QuestionBank | None = None  # the near questions' keys, loaded on first use
        self._subject_means: dict[tuple, torch.Tensor] = {}  # the subject-centered gate's means, by their prompts
        # The chat template's turns before the question (the same in every plain pass), computed once for
        # the packed captures (memory.packing); none for a tokenizer without a chat template.
        prefix = template_prefix(lambda q: render_prompt(self.tokenizer, q, config.system)) if self.tokenizer.chat_template else []
        self._prefix = PrefixCache(prefix, self._prefix_states)
        self._below = self._below_parameters()  # what the prefix's cache depends on

    @staticmethod
    def layer_for(model, layer: int | None) -> int:
        """The layer an editor with ``layer`` edits: the given one (checked) or the default."""
        return arch.check_layer(model, arch.default_layer(model) if layer is None else layer)

    def _head(self) -> Head:
        """The final norm and LM head, which read the last layer's output (memory.row_gain)."""
        norm = arch.final_norm(self.model)
        eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))
        return Head(self.model.get_output_embeddings().weight, norm.weight, float(eps))

    def prepare_keys(self) -> str:
        """Collect (or find) the key covariance now, not at the first solve; says what was done. (The
        answer gate's mean answer state is collected with the editor.)"""
        if self.config.near_questions:
            self.question_bank()
        if not isinstance(self.joint.metric, LazyMetric):
            what = "gated neurons (--gate) need" if self.gated is not None else "the paper's identity norm (preserve 0) needs"
            return f"{what} no keys" + (
                f"; near questions' keys for layer {self.layer} ready" if self.config.near_questions else "") + (
                f"; the answer gate's mean answer state ready under {data_dir() / 'keys'}" if self.config.answer_gate else "")
        self.joint.metric.built()
        return f"keys for layer {self.layer} ready under {data_dir() / 'keys'}"

    def _answer_mean(self) -> torch.Tensor:
        """The mean answer state the answer gate centers on (memory.answer_gate), from the cache or
        collected now from the base model."""
        with gated.uninstalled(self.mlp, self.model):
            return answer_mean(self.loaded, arch.architecture_of(self.model).final_norm, self.config.system,
                               self.joint.base_sha256, self._progress)

    def _lazy_metric(self, layer: int, down_name: str, W0: torch.Tensor, progress: Progress | None) -> LazyMetric | None:
        """The preserving metric of ``layer``'s down_proj, built at the first solve; None with preserve 0."""
        if self.config.preserve <= 0 or self.config.gate:  # gated neurons leave down_proj alone: no metric
            return None
        sha = tensor_sha256(W0.detach().float().cpu())
        return LazyMetric(self.config.preserve, lambda: self._metric(layer, down_name, sha, progress),
                          question_weight=self.config.question_keys)

    def _metric(self, layer: int, down_name: str, weights_sha256: str, progress: Progress | None) -> PreservingMetric:
        """The preserving metric of a layer, from the cached key covariance (collected once)."""
        pairs = key_data_pairs(self.config.keys_data) if self.config.keys_data else ()
        with self._lower_base_weights():  # the keys of the base model, whatever is learned below
            C = key_covariance(self.loaded, layer, down_name, self.config.system, weights_sha256, progress, pairs,
                               question_weight=self.config.question_keys)
        return PreservingMetric(C.to(self.loaded.device), self.config.preserve)

    def _lower_base_weights(self) -> ExitStack:
        """A context in which the lower layers a spread solve writes hold their base weights, so a
        capture sees the base model's keys (memory.spread); nothing with one layer."""
        return self._holding(self.base_matrices()[1:])

    def base_sha256s(self) -> dict[str, str]:
        """parameter -> sha256 of its base weights, for every matrix this editor writes (the ledger's checkpoint)."""
        return {self.parameter: self.joint.base_sha256, **{layer.parameter: layer.base_sha256 for layer in self.joint.lower}}

    def base_weights(self) -> ExitStack:
        """A context in which every matrix this editor writes holds its base weights (and its gated
        neurons, if any, are off)."""
        stack = self._holding(self.base_matrices())
        if self.gated is not None:
            gated.uninstall(self.mlp)
            stack.callback(self._install_neurons)
        return stack

    def _install_neurons(self) -> None:
        if self.neurons is not None and self.neurons.count:
            gated.install(self.mlp, self.neurons, self.model)

    def _holding(self, matrices: list[tuple[str, torch.Tensor]]) -> ExitStack:
        stack = ExitStack()
        for parameter, W0 in matrices:
            stack.enter_context(weight_set_to(self.model, parameter, W0))
        return stack

    def base_matrices(self) -> list[tuple[str, torch.Tensor]]:
        """(parameter, base weights) of every matrix this editor writes: the edited layer's, then the lower ones."""
        return [(self.parameter, self.joint.W0), *((f"{n}.weight", W0) for n, W0 in zip(self.lower_names, self.lower_W0))]

    def relative_change(self) -> float:
        """||live - W0|| / ||W0|| over every matrix this editor writes, stacked (0 with gated neurons,
        which leave them alone; ``neuron_stats`` says what they add)."""
        change = base = 0.0
        for name, W0 in self.base_matrices():
            W = self.model.get_parameter(name).detach().double().cpu()
            change += float((W - W0.double()).square().sum())
            base += float(W0.double().square().sum())
        return (change / base) ** 0.5

    def neuron_stats(self) -> dict[str, float]:
        """With gated neurons: how many are live and the Frobenius norm of their values (in the residual
        stream's units, each scaled by an activation <= 1, so not comparable with ||dW||); {} without."""
        if self.gated is None:
            return {}
        return {"neurons": self.neurons.count, "neuron_value_norm": self.neurons.value_norm()}

    @property
    def deltas(self) -> list[LowRankDelta]:
        """The live deltas: the edited layer's, then the lower layers' of a spread solve."""
        return [self.delta, *self.joint.lower_deltas(self.delta)]

    # --- computing (never mutates the model) --------------------------------------------
    def capture_pass(self, p: Pass) -> PassRows:
        """One pass's rows (``capture_passes`` of it alone)."""
        return self.capture_passes([p])[0]

    @torch.no_grad()
    def capture_passes(self, passes: list[Pass]) -> list[PassRows]:
        """One forward pass over all ``passes``, stopped after the edited layer: each one's rows of
        (U, V) at layer L's down_proj, and the keys at the lower layers of a spread solve. The passes are
        packed into one sequence, those that begin with the chat template's shared prefix after its cached
        keys and values (memory.packing; computed again after a write below the edited layer)."""
        for p in passes:
            self._check_length(p)
        cap, packed = self._capture_packed([p.input_ids[0].tolist() for p in passes], [p.prompt_len - 1 for p in passes])
        captured = []
        for i, p in enumerate(passes):
            at = (0, packed.at(i, p.rows).to(cap.inputs[self.down_name].device))
            U, V = (cap.inputs[name][at].float().cpu() for name in (self.down_name, self.norm_name))
            captured.append(PassRows(U, V, self._lower_keys(cap, at)))
        return captured

    @torch.no_grad()
    def _capture_packed(self, sequences: list[list[int]], first_rows: list[int]) -> tuple[Capture, Packed]:
        """One forward pass over ``sequences`` packed into one sequence, those that begin with the chat
        template's shared prefix (and read nothing in it: ``first_rows``) after its cached keys and values,
        stopped after the edited layer: the capture of the lower layers' down_proj inputs, the edited layer's
        norm and down_proj inputs, and where each sequence's positions sit in it (memory.packing)."""
        prefix = self._prefix.prefix if self._prefix_cacheable() else []
        packed = pack(sequences, first_rows, prefix, self.model.dtype)
        inputs, _ = packed.inputs(self.model, self._prefix, self._below_state())
        with Capture(self.model, [*self.lower_names, self.norm_name, self.down_name], stop=True) as cap:
            with self._lower_base_weights():
                cap.run(**inputs, use_cache=False)
        return cap, packed

    @torch.no_grad()
    def predicted(self, p: Pass, top: int) -> torch.Tensor:
        """The top ``top`` tokens (T, top) the model as it is now predicts at each of ``p``'s rows, from a
        forward pass of ``p`` alone (the neurons of the edited layer read the whole sequence: no packing)."""
        self._check_length(p)
        with self._lower_base_weights():
            out = self.model(input_ids=p.input_ids.to(self.loaded.device), use_cache=False, logits_to_keep=len(p.targets))
        return out.logits[0, -len(p.targets):].topk(top, -1).indices.cpu()  # the rows are the last positions

    def _prefix_cacheable(self) -> bool:
        """Whether the packed capture may attend to the shared prefix from its cache: not where gated neurons
        or a QFt block sit below the edited layer (another layer's facts, a converted model): what they
        compute is not held in the parameters whose version counters ``_below_state`` reads."""
        below = arch.decoder_layers(self.model)[:self.layer]
        return installed_qf2(self.model) is None and not any(gated.installed_patch(layer.mlp) for layer in below)

    def _below_state(self) -> tuple[int, ...]:
        """The version counters of every parameter the prefix's keys and values up to the edited layer depend
        on (``_below_parameters``): any in-place write to one (another layer's facts) bumps it, and the
        prefix is computed again."""
        return tuple(p._version for p in self._below)

    def _below_parameters(self) -> list[torch.Tensor]:
        """The parameters outside the decoder layers above the edited one and outside its MLP (whose output
        comes after its keys), but the matrices this editor restores to their base weights for a capture (a
        spread's lower down_proj)."""
        own = {f"{name}.weight" for name in self.lower_names}
        layers = f"{arch.architecture_of(self.model).layers}."

        def below(name: str) -> bool:
            if not name.startswith(layers):
                return True  # the embeddings (and the head and final norm: rarely written, harmless to watch)
            layer = int(name[len(layers):].split(".")[0])
            return layer < self.layer or (layer == self.layer and not name.startswith(f"{self.mlp_name}."))

        return [p for name, p in self.model.named_parameters() if below(name) and name not in own]

    def _prefix_states(self, prefix: list[int]):
        """The KV cache of ``prefix`` at the layers up to the edited one, from the weights below it as they
        are now (a spread's own lower matrices at their base, as in a capture); no edit of the edited
        layer's MLP changes it: what a packed capture attends to."""
        with self._lower_base_weights():
            cache, _ = prefix_states(self.model, prefix, [self.down_name])
        return cache, None

    def _lower_keys(self, cap: Capture, at) -> torch.Tensor | None:
        """The lower layers' down_proj inputs at positions ``at`` of a capture -> (k-1, T, D); None with one layer."""
        if not self.lower_names:
            return None
        return torch.stack([cap.inputs[name][at].float().cpu() for name in self.lower_names])

    def capture_rows(self, questions: list[tuple[Pass, Pass, torch.Tensor]], answer: str) -> FactRows:
        """The rows of each question's two teacher-forced passes (instructed, plain: the same targets)
        weighted by its rows' significance, all in one forward pass, stacked in order; automatic
        significance and focus (both need the plain pass's predictions) if configured."""
        config, parts = self.config, []
        captured = self.capture_passes([p for instructed, plain, _ in questions for p in (instructed, plain)])
        for (instructed, plain, significance), (U, V, _), plain_rows in zip(questions, captured[0::2], captured[1::2]):
            top = self.predicted(plain, max(config.focus + 1, 1)) if config.auto_significance or config.focus else None
            if config.auto_significance:
                significance = auto_significance(top[:, 0], plain.targets, significance)
            focus = None
            if config.focus:
                head = self.model.get_output_embeddings().weight
                focus = focus_bases(head, arch.final_norm(self.model).weight, plain.targets, top)
            parts.append(FactRows(answer, plain.targets, U, V, plain_rows.U, plain_rows.V, significance, focus,
                                  lower_keys=plain_rows.lower, lower_layers=self.layers[:-1],  # () and None with one layer
                                  openings=answer_openings(len(plain.targets)),
                                  recent=row_windows(plain.input_ids[0], len(plain.targets))))
        return stack_rows(parts)

    def capture(self, fact: Fact, answer: str | None = None) -> FactRows:
        """Both teacher-forced passes over the same answer tokens, for the query and each of its
        phrasings (one forward pass); then, with ``answer_forms``, the same for the instructed
        model's own answer when another was given; the rows of all of them, in that order."""
        answer = (answer or "").strip() or self.answer_for(fact)
        rows = self._question_rows(fact, answer, fact.significance)
        forms = [self._question_rows(fact, form, None) for form in self.other_forms(fact, answer)]
        rows = self.anchored(with_forms(rows, forms), fact.query, fact.subject, self.chat_prompt_ids)
        return self.with_subject_key(rows, fact.query, fact.subject, self.chat_prompt_ids)

    def with_subject_key(self, rows: FactRows, query: str, subject: str | None,
                         prompt_ids: Callable[[str], list[int]], chat: bool = True) -> FactRows:
        """``rows`` with the subject key of ``query`` put as ``prompt_ids(query)`` (memory.subject_gate),
        for gated neurons, when the fact has a subject whose tokens occur in the prompt; else as they are.
        With the subject-centered gate, also its subject's mean (with_subject_mean)."""
        if self.gated is None or not subject:
            return rows
        ids = prompt_ids(query)
        at = subject_position(self.tokenizer, ids, subject)
        if at is None:
            log.info("subject %r not found among the tokens of %r: no subject key", subject, query)
            return rows
        return self.with_subject_mean(replace(rows, subject_key=subject_key(self.model, ids, at)), subject, prompt_ids, chat)

    def with_subject_mean(self, rows: FactRows, subject: str | None, prompt_ids: Callable[[str], list[int]],
                          chat: bool = True) -> FactRows:
        """With the subject-centered gate, ``rows`` of a fact with a subject key and no subject mean with the
        subject's mean MLP input (memory.subject_center): its shipped questions put as ``prompt_ids`` (chat
        questions, or plain completions with ``chat`` False) in one packed forward pass (``_subject_mean``); else as
        they are."""
        if not self.config.subject_centered or rows.subject_key is None or rows.subject_mean is not None or not subject:
            return rows
        return replace(rows, subject_mean=self._subject_mean([prompt_ids(q) for q in subject_mean_questions(subject, chat)]))

    def _subject_mean(self, prompts: list[list[int]]) -> torch.Tensor:
        """The mean MLP input (N,) at the last position of a subject's mean questions ``prompts``, kept for the
        next fact about the same subject while the weights below the edited layer stay as they are (the facts
        taught about one subject share it; not kept where hooks below could change it: ``_prefix_cacheable``)."""
        key, keep = (tuple(map(tuple, prompts)), self._below_state()), self._prefix_cacheable()
        if keep and key in self._subject_means:
            return self._subject_means[key]
        _, residuals, _ = self.capture_anchors(prompts)
        mean = self.mlp_inputs(residuals).mean(0)
        if keep:
            if len(self._subject_means) >= SUBJECT_MEANS_KEPT:
                self._subject_means.pop(next(iter(self._subject_means)))  # the oldest
            self._subject_means[key] = mean
        return mean

    def chat_prompt_ids(self, query: str) -> list[int]:
        """The chat prompt of ``query`` under this editor's system prompt, up to the assistant header."""
        return render_prompt(self.tokenizer, query, self.config.system)

    def _question_rows(self, fact: Fact, answer: str, significance: tuple[float, ...] | None) -> FactRows:
        """The rows of every question of ``fact`` (its query, its phrasings, then its query after the
        context prefixes of ``config.contexts``) answered ``answer``."""
        system, questions = self.config.system, []
        tokens = self.emitted_tokens(answer)  # the model's own answer: its own tokens (memory.answering)
        for query in fact.queries + in_contexts(fact.query, self.config.contexts):
            instructed = build_pass(self.tokenizer, query, answer, instructed_system(fact.instruction, system), tokens)
            plain = build_pass(self.tokenizer, query, answer, system, tokens)
            questions.append((instructed, plain, significance_vector(significance, len(plain.targets) - 1)))
        return self.capture_rows(questions, answer)

    def other_forms(self, fact: Fact, answer: str) -> list[str]:
        """With ``answer_forms``, the answer the instructed model gives in its own words (a sentence,
        for a bare entity) when it differs from ``answer`` and names it; else none."""
        if not self.config.answer_forms or not (fact.answer or "").strip():
            return []  # off, or the answer is already the model's own
        try:
            own = self.instructed_answer(fact)
        except ConsolidationError as exc:  # no finished answer of its own: the given one alone
            log.info("no other form of the answer to %r: %s", fact.query, exc)
            return []
        if own.strip() == answer or answer.casefold() not in own.casefold():
            return []  # the same form, or one that does not say the answer (it would teach something else)
        return [own.strip()]

    def anchored(self, rows: FactRows, query: str, subject: str | None, prompt_ids: Callable[[str], list[int]]) -> FactRows:
        """``rows`` with the anchors of ``config.anchors`` (memory.anchors): ``query`` asked of other
        subjects, each put to the model as ``prompt_ids(question)`` (none when the fact has no
        subject), then those of ``config.near_questions`` (memory.near_questions); ``rows`` as they
        are when there are none."""
        questions = contrast_queries(query, subject, self.config.anchors)
        parts = [self.capture_anchors([prompt_ids(q) for q in questions])] if questions else []
        if self.config.near_questions:  # refused with spread: no lower layers' keys to add
            near = self.question_bank().nearest(rows.U_plain[0], self.config.near_questions, subject)
            # an anchor's residual is zero whatever V is (both passes are the same): zeros stand for it
            parts.append((near, torch.zeros(near.shape[0], rows.V.shape[1]), None))
        if not parts:
            return rows
        keys, residuals = (torch.cat([part[i] for part in parts]) for i in (0, 1))
        return with_anchors(rows, keys, residuals, parts[0][2])

    def question_bank(self) -> QuestionBank:
        """The shipped factual prompts' keys at the edited layer (memory.near_questions), from the cache
        or collected now, at the base weights."""
        if self._bank is None:
            with self._lower_base_weights():
                self._bank = question_bank(self.loaded, self.layer, self.down_name, self.config.system,
                                           tensor_sha256(self.joint.W0), self._progress)
        return self._bank

    def capture_anchors(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Keys (A, D) and residuals (A, N) at the last token of each prompt (the position that
        decides the answer), and the keys at the lower layers of a spread solve ((k-1, A, D), None
        with one layer), in one packed forward pass (``_capture_packed``)."""
        last = [len(p) - 1 for p in prompts]
        cap, packed = self._capture_packed(prompts, last)
        device = cap.inputs[self.down_name].device
        at = (0, torch.tensor([packed.at(i, row) for i, row in enumerate(last)], device=device))
        return (*(cap.inputs[name][at].float().cpu() for name in (self.down_name, self.norm_name)), self._lower_keys(cap, at))

    # --- mutating ---------------------------------------------------------------------
    @torch.no_grad()
    def write(self, delta: LowRankDelta) -> None:
        """weight <- W0 + dW (refusing non-finite deltas before anything is written)."""
        weight = self.model.get_parameter(self.parameter)
        if not delta.is_finite():
            raise NonFiniteDeltaError(f"refusing to write a non-finite delta into {self.parameter}")
        lower = self.joint.lower_deltas(delta)
        if not all(d.is_finite() for d in lower):
            raise NonFiniteDeltaError(f"refusing to write a non-finite delta into the layers below {self.parameter}")
        for W0, d in ((self.joint.W0, delta), *zip(self.lower_W0, lower)):
            self.model.get_parameter(d.parameter).copy_(W0.to(weight.device))
            if d.rank:  # adding an empty delta would still turn W0's -0.0 entries into +0.0
                d.apply(self.model, keep_for_revert=False)  # undo = rebuild from W0, no backup needed
        self.delta = delta

    def solve(self) -> Solved:
        """The joint solve of all active facts from the base model, not written: the gated neurons
        with a gate, else down_proj's delta."""
        return self._facts.solve()

    def write_solved(self, solved: Solved) -> None:
        """Write what ``solve`` gave."""
        if self.gated is not None:
            self.write_neurons(solved)
        else:
            self.write(solved)

    def rebuild(self) -> float:
        """Re-solve all active facts jointly from the base model and write the result; returns seconds."""
        start = time.perf_counter()
        self.write_solved(self.solve())
        return time.perf_counter() - start

    def write_neurons(self, neurons: gated.GatedNeurons) -> None:
        """Put the solved gated neurons on the layer's MLP (refusing non-finite values first)."""
        if not neurons.is_finite():
            raise NonFiniteDeltaError(f"refusing to install non-finite gated neurons at layer {self.layer}")
        gated.uninstall(self.mlp)
        self.neurons = neurons
        self._install_neurons()

    def add_rows(self, key: Hashable, rows: FactRows) -> None:
        rows = self.joint.with_gains(rows)
        if self.gated is not None:
            self.gated.add(key, *self.gated_rows(rows), subject_key=rows.subject_key, answer_states=self.answer_states(rows),
                           subject_mean=rows.subject_mean, openings=rows.openings,
                           targets=torch.tensor(rows.targets, dtype=torch.int64), recent=rows.recent)
        else:
            self.joint.add(key, rows)

    def gated_rows(self, rows: FactRows) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A fact's rows as gated neurons need them: the plain pass's MLP inputs X' (T, N) (the layer's
        norm of the residual V'), the residual each row needs (T, N), the one the linear solve would
        write (JointQF.residual: QF's R, focused and times the gain as configured), and the rows'
        significance (T,)."""
        return self.mlp_inputs(rows.V_plain), self.joint.residual(rows).T, rows.significance

    @torch.no_grad()
    def mlp_inputs(self, residuals: torch.Tensor) -> torch.Tensor:
        """The edited layer's MLP inputs (..., N) float32 on the CPU: its norm of the residuals entering the MLP."""
        norm = self.model.get_submodule(self.norm_name)
        weight = next(norm.parameters())
        return norm(residuals.to(weight.device, weight.dtype)).float().cpu()

    def answer_states(self, rows: FactRows) -> torch.Tensor | None:
        """With an answer gate, the base model's answer state at each of a fact's rows (T, N) (memory.answer_gate),
        from its plain pass's captures; None without."""
        return answer_states(self.model, self.joint.after_layer(rows)) if self.config.answer_gate else None

    # --- the facts held, whichever way they are written ------------------------------------
    @property
    def _facts(self) -> gated.GatedMemory | JointQF:
        """What holds the facts: the gated memory with --gate, else the joint solve."""
        return self.gated if self.gated is not None else self.joint

    @property
    def fact_keys(self) -> list[Hashable]:
        return self._facts.keys

    def holds(self, key: Hashable) -> bool:
        return key in self._facts

    @property
    def num_facts(self) -> int:
        return len(self._facts)

    def written_all(self) -> bool:
        """Whether the live weights (or neurons) hold every row of the facts held."""
        if self.gated is not None:
            return self.neurons.count == self.gated.num_rows
        return self.delta.rank == self.joint.num_rows

    def share_of(self, key: Hashable, solved: Solved) -> list[LowRankDelta]:
        """Fact ``key``'s part of a solve (what ``learn`` hands its recorder), as the ledger records it:
        its share of the joint delta (and of the lower layers' with --spread); with gated neurons, its
        neurons as factors (left = their values (N, T), right = their unit keys (T, N) in the MLP
        input's space)."""
        if isinstance(solved, LowRankDelta):
            return [self.joint.share(solved, key), *self.joint.lower_deltas(solved, key)]
        at = self.gated.rows_of(key)
        return [LowRankDelta(solved.values[at].T.contiguous(), solved.keys[at].contiguous(),
                             gated.gated_parameter(self.mlp_name), self.joint.base_sha256, self.loaded.name, self.layer,
                             {"method": "qf", "gate": str(self.config.gate)})]

    def drop(self, key: Hashable) -> None:
        """Take a fact out of the solve without re-solving (``rebuild`` writes the result)."""
        self._facts.remove(key)

    def remove(self, key: Hashable) -> float:
        """Drop a fact and re-solve: exact undo, no forward pass. Returns seconds."""
        self.drop(key)
        return self.rebuild()

    def learn(
        self, fact: Fact, key: Hashable | None = None, verify: bool = True, record: Recorder | None = None
    ) -> Consolidation:
        """Capture, solve jointly, (record), write, verify. On any error before the write the
        fact is dropped again and the weights are untouched.

        ``record(key, rows, delta)`` runs after the solve and *before* the write (record before
        apply); it returns the fact's durable key (e.g. the ledger's edit id).
        """
        if key is None:
            # A tuple never collides with the durable keys a recorder returns (ledger ids).
            key, self._next_key = ("pending", self._next_key), self._next_key + 1
        t0 = time.perf_counter()
        rows = self.joint.with_gains(self.capture(fact))  # the row gains, decided once and recorded
        t1 = time.perf_counter()
        recorder = None if record is None else (lambda k, d: record(k, rows, d))
        self.add_rows(key, rows)
        solved, key, solve_seconds = commit(self._facts, key, recorder)  # the gated neurons, or down_proj's delta
        self.write_solved(solved)
        t2 = t1 + solve_seconds
        t3 = time.perf_counter()
        verification = self.ask(fact.query).text if verify else ""
        timings = {"capture": t1 - t0, "solve": t2 - t1, "record_apply": t3 - t2, "verify": time.perf_counter() - t3}
        log.info("learned %r in %.2fs (%d rows)", fact.query, t3 - t0, rows.num_rows)
        return Consolidation(key, fact, rows.answer, rows.num_rows, verification, t3 - t0, timings)
