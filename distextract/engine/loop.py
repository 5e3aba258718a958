"""The coordinator: the stop-rule state machine over the stages.

Probe the precision and search the first line in full (:mod:`.opening`): its regions' jumps
give the first model; then scan further lines until enough come back clean with the
validation error at the target (``certified``), the error stays above it
(``precision_floor``), rounds or budget run out, or the target is not a one-hidden-layer ReLU
network. Float64 answers are finished
(:mod:`.finish`), imprecise ones polished and refined (:mod:`.imprecise`).

The stages live in their own modules and take the coordinator as their context: queries go
through :class:`.session.QuerySession` (the only holder of the executor), paid rows are kept in
:class:`.paid.PaidRows`, models are assembled by :func:`.assemble.assemble`, lines scanned by
:mod:`.scan`, updated by :mod:`.update` and cleaned up by :mod:`.cleanup`. Every random choice
derives from the run's seed through :class:`.seeds.Streams`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np

from .._errors import BudgetExhausted, TargetMismatch
from .._model import ReluNetwork
from . import certificate, cleanup, finish, imprecise, opening, repair, update
from ._config import ExtractConfig
from .assemble import assemble, no_worse
from .lines import Line, line_reach, make_line
from .neurons import NeuronSet
from .paid import PaidRows
from .precision import PROBE_LINES, PROBE_POINTS
from .regions import LineScan
from .seeds import Streams
from .session import QuerySession
from .settings import Derived, Settings, derive
from .solve import relative_error, solve_full
from .state import EngineResult, EngineState, LineRecord, PrecisionLimited

logger = logging.getLogger(__name__)

__all__ = ["PROBE_LINES", "PROBE_POINTS", "Coordinator", "EngineResult"]


class Coordinator:
    """Runs the extraction rounds over an executor.

    Parameters
    ----------
    executor : Executor
        Runs the engine's tasks (:class:`.tasks.LocalExecutor` or Ray workers).
    d : int
        Input dimension.
    cfg : ExtractConfig
    seed : int
    progress : callable, optional
        Called with a dict of counters after each phase.
    parallelism : int
        Concurrent task slots of the executor.
    validation_points : int, optional
        Validation points (default ``cfg.validation_points``).
    settings : Settings, optional
        The stages' fixed settings (:mod:`.settings`; default: ``Settings()``).
    """

    def __init__(self, executor, d: int, cfg: ExtractConfig, seed: int,
                 progress: Callable[[dict], None] | None = None, parallelism: int = 1,
                 validation_points: int | None = None,
                 settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.session = QuerySession(executor, parallelism, self.settings.session)
        self.cfg = cfg
        self.streams = Streams.from_seed(seed)
        self.st = EngineState(d=d)
        self.paid = PaidRows(d, self.settings.paid)
        self.progress = progress
        self.n_val = cfg.validation_points if validation_points is None else validation_points
        self.t_start = time.perf_counter()
        self.mismatch_lines = 0
        self.verdict: str | None = None
        self.first_ends: dict = {}  # first line's segment ends paid with the probe
        self.validation_pending = False  # validation points to go with the next request

    # ------------------------------------------------------------ derived settings
    @property
    def derived(self) -> Derived:
        """The settings in force (:func:`.settings.derive`: config, measured precision, and
        the first line's kinks and stencil rounding)."""
        st = self.st
        return derive(self.cfg, st.precision, st.first_kinks, st.long_steps, st.d,
                      self.settings.loop.query_bound_factor, st.opening_queries)

    @property
    def imprecise(self) -> bool:
        """Answers far coarser than float64 rounding (float32, rounded decimals)."""
        return self.st.precision.imprecise

    @property
    def check_factor(self) -> float:
        return self.derived.check_factor

    @property
    def line_segments(self) -> int:
        return self.derived.line_segments

    @property
    def crossing_rate(self) -> float:
        return self.derived.crossing_rate

    @property
    def rank_factor(self) -> float:
        return self.derived.rank_factor

    @property
    def match_ceiling(self) -> float:
        return self.derived.match_ceiling

    @property
    def target(self) -> float:
        return self.derived.target_rel_l2

    @property
    def target_floor(self) -> float:
        return self.derived.target_floor

    # ------------------------------------------------------------------ helpers
    def line(self, index: int) -> Line:
        """Line ``index`` of this run (its own seed, reach ``line_reach·sqrt(d)·s``)."""
        cfg = self.cfg
        reach = line_reach(self.st.d, cfg.line_reach, cfg.input_scale)
        return make_line(index, self.st.d, self.streams.seed_seq, cfg.input_scale, reach)

    def emit(self, phase: str, **extra) -> None:
        """Report progress (a dict of counters) to the ``progress`` callback."""
        if self.progress is None:
            return
        st = self.st
        info = {"phase": phase, "queries": self.session.queries,
                "neurons": 0 if st.neurons is None else st.neurons.size,
                "lines": len(st.lines), "val_rel_l2": st.val_rel_l2,
                "elapsed": time.perf_counter() - self.t_start}
        info.update(extra)
        self.progress(info)

    def mismatch(self, observation: str) -> None:
        raise TargetMismatch(observation, self.session.queries)

    def record_line(self, line: Line, kind: str, scan: LineScan, regions: list,
                    q0: int) -> None:
        self.st.lines.append(LineRecord(
            index=line.index, kind=kind, u=line.u, v=line.v, reach=line.reach,
            kinks=scan.kinks, resolved=scan.resolved,
            regions_measured=sum(r.J is not None for r in regions),
            regions_failed=sum(r.J is None for r in regions),
            regions_repaired=sum(r.status == "repaired" for r in regions),
            queries=self.session.queries - q0))

    def round_info(self, index: int, kinks: int, added: int, removed: int) -> dict:
        return {"line": index, "kinks": kinks, "added": added, "removed": removed,
                "neurons": self.st.neurons.size, "queries": self.session.queries,
                "val_rel_l2": self.st.val_rel_l2, "val_max_abs": self.st.val_max_abs,
                "elapsed": time.perf_counter() - self.t_start}

    # ------------------------------------------------------------------ models
    def assemble(self) -> None:
        """Assemble the model of ``st.neurons`` (:func:`.assemble.assemble`) and take it."""
        st = self.st
        if self.validation_pending:  # no region centre went out with them
            self.validation_pending = False
            opening.validation_set(self)
        res = assemble(st.neurons, self.paid, st.m, self.streams.assemble(len(st.lines)),
                       self.imprecise, self.target, self.cfg.solve_max_unknowns,
                       self.settings.assemble)
        st.model, st.val_rel_l2, st.val_max_abs = res.model, res.val_rel_l2, res.val_max_abs
        logger.info("model: %d neurons, validation rel L2 %.3g, max abs %.3g",
                    st.neurons.size, st.val_rel_l2, st.val_max_abs)

    def keep_if_no_worse(self, cand: NeuronSet, allowed: float = 0.0,
                         slack: float = 1.01) -> bool:
        """Assemble the model from ``cand``; keep it if it is no worse
        (:func:`.assemble.no_worse` with ``allowed`` and ``slack``), else restore the
        current model."""
        st = self.st
        before = (st.val_rel_l2, st.model, st.neurons, st.val_max_abs)
        st.neurons = cand
        self.assemble()
        if no_worse(st.val_rel_l2, before[0], allowed, slack):
            return True
        st.val_rel_l2, st.model, st.neurons, st.val_max_abs = before
        return False

    def fallback_model(self) -> None:
        """Best affine model from the validation data when no line could be finished."""
        st = self.st
        ns = st.neurons if st.neurons is not None else NeuronSet.empty(st.d, max(st.m, 1))
        st.neurons = ns
        if self.paid.solve_X or self.paid.Xv.shape[0] > st.d:
            if not self.paid.solve_X:
                self.paid.add(self.paid.Xv, self.paid.Yv)
            self.assemble()
        else:
            m = max(st.m, 1)
            st.model = ReluNetwork(ns.W, ns.b, ns.a.T if ns.size else np.zeros((m, 0)),
                                   np.zeros(m), np.zeros((m, st.d)))

    def affine_fallback(self) -> dict:
        """Imprecise answers, at the end: the best affine map (least squares over the
        Gaussian rows held, else the line rows) replaces the model when it validates better
        (junk kinks from answers too coarse for the search leave a model worse than no
        neuron at all). Returns ``report["affine_fallback"]``: ``taken``, the two validation
        errors and the neurons the model had."""
        st, paid = self.st, self.paid
        d, m = st.d, max(st.m, 1)
        X, Y = paid.Xs, paid.Ys.reshape(-1, m)
        if X.shape[0] < 2 * (d + 1) and paid.solve_X:
            X, Y = np.concatenate(paid.solve_X), np.concatenate(paid.solve_Y).reshape(-1, m)
        k = 0 if st.neurons is None else int(st.neurons.size)
        out = {"taken": False, "affine_rel_l2": None, "model_rel_l2": float(st.val_rel_l2),
               "model_neurons": k}
        if st.model is None or X.shape[0] < d + 2 or paid.Xv.shape[0] == 0:
            return out
        aff = solve_full(NeuronSet.empty(d, m), X, Y)  # no neuron: the affine fit
        err, mx = relative_error(aff, paid.Xv, paid.Yv.reshape(-1, m))
        out["affine_rel_l2"] = float(err)
        if err < st.val_rel_l2:
            logger.warning("the affine map validates better than the %d-neuron model (relative "
                           "L2 %.3g < %.3g): returning it", k, err, st.val_rel_l2)
            out["taken"] = True
            st.model, st.neurons = aff, NeuronSet.empty(d, m)
            st.val_rel_l2, st.val_max_abs = float(err), float(mx)
        return out

    # ------------------------------------------------------------------ rounds
    def first_line(self) -> None:
        """The first line's stage (:func:`.opening.first_line`); a test may wrap it."""
        opening.first_line(self)

    def quiet(self, check: dict) -> dict:
        """Quiet rounds (:func:`.imprecise.quiet_rounds`) on the model the certificate
        ``check`` judged, last: the rows where its answers are near zero weigh most in every
        later fit, and on a model still lacking neurons they pull the weak ones towards the
        missing ones' misfit (hard:norm_range d16-k32 seed 32, float32: bought before the
        certificate and its repair they took the run from 22 of 32 matched to 15; bought
        last, to 25). A model they changed is judged by fresh check rows and kept when
        those contradict no more neurons (:func:`.repair.contradicted`) and name no more
        uncertain (the worst row's miss is not compared: fresh rows differ by chance);
        otherwise the model before them and ``check`` stand. Returns the certificate of the
        final model, with ``quiet``: ``rows`` bought and whether the result was ``kept``."""
        st = self.st
        before = st.snapshot()
        try:
            rows = imprecise.quiet_rounds(self)
        except (PrecisionLimited, TargetMismatch) as exc:
            logger.warning("%s: quiet rounds stopped", exc)
            rows = 0
        if not rows:
            st.restore(before)
            return check
        new = None
        if st.model is not before[0]:
            try:
                new = certificate.check(self, round=repair.QUIET_CHECK_ROUND)[0]
            except (BudgetExhausted, PrecisionLimited, TargetMismatch) as exc:
                logger.warning("%s: the quiet rounds' model was not checked", exc)
        if (new is None or not new["checked"]
                or repair.contradicted(new).size > repair.contradicted(check).size
                or len(new["uncertain"]) > len(check["uncertain"])):
            st.restore(before)
            return dict(check, quiet={"rows": int(rows), "kept": False})
        return dict(new, rows=int(check["rows"] + new["rows"]),
                    quiet={"rows": int(rows), "kept": True},
                    **({"repairs": check["repairs"]} if "repairs" in check else {}))

    def run(self) -> EngineResult:
        ls = self.settings.loop
        rs = self.settings.rules
        cfg, st = self.cfg, self.st
        reason = "certified"
        judged = False  # the reason is the validation's verdict after the refinement
        try:
            opening.first_request(self)
            self.first_line()
            # imprecise answers: the rows a run may send, from the first line's kinks
            # (settings.QUERY_BOUND_FACTOR); reaching it ends the run as "budget"
            st.opening_queries = self.session.queries
            self.session.cap = self.derived.query_bound
            clean = 0
            index = 1
            best_val, stalled = st.val_rel_l2, 0  # imprecise answers: lines that stall
            while True:
                if index >= cfg.max_rounds:
                    reason = "max_rounds"
                    break
                if imprecise.coarse(self):
                    # coarse answers: further searched lines add junk neurons; the first
                    # line's go to the refinement (.imprecise.coarse)
                    reason = "precision_floor"
                    break
                # A clean line with the error above target: a weak neuron whose slope
                # change hides under the model's own error at its neighbours' kinks (the
                # residual search's threshold) and under the slope error of the search's
                # short slope steps. One line searched in full on F with 100x longer
                # slope steps sees slope changes 100x weaker.
                sensitive = (clean == cfg.clean_lines and not self.imprecise
                             and st.val_rel_l2 > self.target
                             and all(rec.kind != "sensitive" for rec in st.lines))
                changes = update.residual_line(self, index, sensitive)
                index += 1
                if self.imprecise and st.m >= ls.imprecise_stall_min_outputs:
                    if st.val_rel_l2 < ls.imprecise_stall_gain * best_val:
                        best_val, stalled = st.val_rel_l2, 0
                    else:
                        stalled += 1
                    if stalled >= ls.imprecise_stall_lines:
                        # lines that no longer lower the error: the refinement does better
                        # (LoopSettings.imprecise_stall_lines)
                        reason = "precision_floor"
                        break
                clean = clean + 1 if changes == 0 else 0
                if clean and not self.imprecise and st.val_rel_l2 > self.target:
                    # a clean line, validation above target: a spurious neuron most lines
                    # miss is tested here, not only by the finishing pass, so no further
                    # line is paid for while it stays (one line after its own is enough to
                    # test it; the validation decides)
                    cleanup.drop_unseen(self, rs.unseen_early_lines)
                if clean >= cfg.clean_lines and st.val_rel_l2 <= self.target:
                    reason = "certified"
                    break
                # imprecise answers: once lines come back clean, or nearly (their Jacobians
                # keep adding and removing a few neurons), the refinement does better than
                # more searched lines, and the lines it may trigger search a residual near
                # the noise (fewer rows for the same error)
                if self.imprecise and (clean >= cfg.clean_lines or changes <= max(
                        ls.imprecise_few_changes, ls.imprecise_few_share * st.neurons.size)):
                    reason = "precision_floor"
                    break
                # Clean lines but the error stays above target: a neuron may cross every line
                # so far outside its reach (its normal nearly orthogonal to all directions) —
                # more lines find it; if they keep finding nothing, the error is a precision
                # floor, not a missing neuron.
                if clean >= cfg.clean_lines + cfg.extra_clean_lines:
                    reason = "precision_floor"
                    break
            if self.imprecise:
                index = imprecise.polish(self, index)
                index = imprecise.recheck(self, index)
                reason = "certified" if st.val_rel_l2 <= self.target else "precision_floor"
                judged = True
            else:
                # (clean lines that a spurious neuron kept from certifying do once it goes)
                if (st.val_rel_l2 > self.target and cleanup.drop_unseen(self)
                        and reason == "precision_floor" and st.val_rel_l2 <= self.target):
                    reason = "certified"
                finish.pin(self)
        except BudgetExhausted as exc:
            logger.warning("%s; returning the best model so far (not certified)", exc)
            reason = "budget"
            if st.model is None:
                self.fallback_model()
            elif self.imprecise and st.neurons is not None and st.neurons.size:
                # the rows paid so far still sharpen the model
                imprecise.refine(self, extra_rows=False, cover=False)
        except PrecisionLimited as exc:
            logger.warning("%s; polishing the hyperplanes found so far", exc)
            reason = "precision_floor"
            try:
                imprecise.polish(self, len(st.lines))
            except BudgetExhausted as exc2:
                logger.warning("%s; returning the best model so far (not certified)", exc2)
                reason = "budget"
            if st.val_rel_l2 > ls.mismatch_error:
                self.verdict = str(exc)
        except TargetMismatch as exc:
            if cfg.on_mismatch == "raise":
                raise
            logger.warning("%s; returning the best model so far, flagged", exc)
            reason = "target_mismatch"
            self.verdict = exc.observation
            if st.model is None:
                self.fallback_model()
        check = fallback = None
        if self.imprecise and reason != "target_mismatch":
            fallback = self.affine_fallback()
            # held-out rows near every hyperplane, always bought on the imprecise path (part
            # of the cost): a neuron they contradict is uncertain and nothing is certified
            check, Xc, Yc = certificate.check(self)
            if check["uncertain"] and repair.runs_after(self, reason):
                # the rows that contradicted the model, and rows near the neurons they name,
                # join the rows held; a refit is checked again with fresh rows
                check = repair.repair(self, check, Xc, Yc)
                if judged and any(r["kept"] for r in check.get("repairs", [])):
                    # the repaired model is judged as the refined one was
                    reason = "certified" if st.val_rel_l2 <= self.target else "precision_floor"
            if (reason in ("certified", "precision_floor") and check["checked"]
                    and check["uncertain"]):
                # (nothing is bought for a model the certificate names no neuron of: in the
                # hard group s30-32, 10 certified runs bought 54 to 162 rows for the same model)
                check = self.quiet(check)
                if judged and check.get("quiet", {}).get("kept"):
                    reason = "certified" if st.val_rel_l2 <= self.target else "precision_floor"
            if reason == "certified" and (check["uncertain"] or not check["checked"]):
                reason = "precision_floor"
        certified = reason == "certified"
        if (not certified and self.verdict is None and reason != "target_mismatch"
                and st.val_rel_l2 > ls.mismatch_error):
            self.verdict = (f"the best model still misses the validation points by relative L2 "
                            f"{st.val_rel_l2:.3g} after {len(st.lines)} lines")
        return EngineResult(model=st.model, neurons=st.neurons, certified=certified,
                            stop_reason=reason, val_rel_l2=st.val_rel_l2,
                            val_max_abs=st.val_max_abs, noise=st.noise,
                            target_rel_l2=self.target, lines=st.lines, rounds=st.rounds,
                            verdict=self.verdict, refinement=st.refinement,
                            finishing=st.finishing, crossing_rate=self.crossing_rate,
                            derived=dict(self.derived.to_dict(),
                                         query_bound_reached=self.session.cap_reached),
                            counters=dict(st.counters), certificate=check,
                            affine_fallback=fallback)
