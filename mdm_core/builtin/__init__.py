"""The built-in plug-in: baseline components, registered through the same hook as any other."""

from __future__ import annotations

from mdm_core.hookspecs import ComponentRef, hookimpl

_B = "mdm_core.builtin"
_D = "mdm_core.data"
_T = "mdm_core.tasks"


@hookimpl
def mdm_components() -> list[ComponentRef]:
    return [
        ComponentRef(
            "time_sampler",
            "uniform",
            f"{_B}.time_samplers:UniformTimeSampler",
            "antithetic stratified uniform t (MDLM baseline)",
        ),
        ComponentRef(
            "forward_process",
            "absorbing",
            f"{_B}.absorbing:AbsorbingProcess",
            "absorbing-state masking with log-linear or cosine schedule",
        ),
        ComponentRef(
            "loss", "mdlm", f"{_B}.losses:MDLMLoss", "MDLM SUBS continuous-time NELBO (PyTorch reference)"
        ),
        ComponentRef(
            "sampler",
            "ancestral",
            f"{_B}.samplers:AncestralSampler",
            "ancestral sampler with denoiser caching, float64 noise",
        ),
        ComponentRef(
            "sampler",
            "confidence",
            f"{_B}.samplers:ConfidenceSampler",
            "reveal the most confident masked positions each step",
        ),
        ComponentRef(
            "evaluator",
            "nll",
            f"{_B}.evaluators:NLLEvaluator",
            "uniform-t NELBO: nats/token, bits/token, perplexity",
        ),
        ComponentRef(
            "evaluator",
            "samples",
            f"{_B}.evaluators:SampleEvaluator",
            "generate samples: NFE, token entropy, and the source's NLL where known",
        ),
        ComponentRef(
            "evaluator",
            "nll_by_t",
            f"{_B}.diagnostics:NLLByTEvaluator",
            "uniform-t NELBO split into t buckets (where in noise a model has learned)",
        ),
        ComponentRef(
            "evaluator",
            "nll_by_context",
            f"{_B}.diagnostics:NLLByContextEvaluator",
            "NLL of masked tokens by distance to the nearest visible token",
        ),
        ComponentRef(
            "evaluator",
            "sample_quality",
            f"{_B}.diagnostics:SampleQualityEvaluator",
            "samples from any sampler scored by the data's exact judge (Markov: true NLL)",
        ),
        ComponentRef(
            "evaluator",
            "gen_ppl",
            f"{_B}.gen_ppl:GenPPLEvaluator",
            "samples from any sampler scored by a judge run's likelihood (gen-PPL under an AR model)",
        ),
        ComponentRef(
            "data",
            "markov",
            f"{_D}.markov:MarkovSource",
            "seeded sparse Markov text with its exact entropy floor (quick-start)",
        ),
        ComponentRef(
            "data", "text", f"{_D}.text:TextFileSource", "local text / jsonl / parquet files through datasets"
        ),
        ComponentRef(
            "data", "hub", f"{_D}.text:HubSource", "a Hugging Face hub dataset by name (needs network)"
        ),
        ComponentRef(
            "data",
            "sudoku",
            f"{_T}.sudoku:SudokuSource",
            "seeded Sudoku puzzles with unique solutions (prompt = clues)",
        ),
        ComponentRef(
            "data",
            "star_graph",
            f"{_T}.star_graph:StarGraphSource",
            "star-graph path finding (Bachmann & Nagarajan 2024)",
        ),
        ComponentRef(
            "evaluator",
            "sudoku_accuracy",
            f"{_T}.sudoku:SudokuAccuracy",
            "cell accuracy on blanks and puzzle accuracy",
        ),
        ComponentRef(
            "evaluator",
            "path_accuracy",
            f"{_T}.star_graph:PathAccuracy",
            "exact path match and token accuracy",
        ),
    ]
