"""The metrics contract (data/eval/metrics.json) and its one-screen summary.

Apart from evaluate.py so that the evaluate stage, which only gathers the figures the other stages
measured, imports neither torch nor lm-eval (about 2 s a run).
"""

from __future__ import annotations

from typing import Any

from pipeline import layout


def gather(llm: dict[str, Any], quantized: dict[str, Any], rag: dict[str, Any],
           index_notes: dict[str, Any], embedder_files: dict[str, Any]) -> dict[str, Any]:
    """The metrics contract: llm.*, lm_eval.<task>.acc, retrieval.*, rag.* (evaluate_rag's
    test half; `rag_tune.*` is the half settings are chosen on), or with no question set
    `rag_auto.*` (retrieval on probes derived from the corpus) alone.

    `quantized_program.*` is the quantized graph on the CPU, before lowering, when measured.
    """
    retrieval = {key: index_notes[key] for key in
                 ("recall_at_10", "embed_cosine_min", "chunks", "chunks_per_s", "index_bytes")
                 if key in index_notes}  # chunks_per_s: from build_index's run record
    retrieval["embedder_pte_bytes"] = embedder_files[layout.EMBEDDER_PTE]["bytes"]
    measured = {"quantized_program": quantized} if "ppl" in quantized else {}
    judged = ({"rag_auto": rag["auto"]} if "auto" in rag else
              {"rag": rag["test"], "rag_tune": rag["tune"]})
    return {**llm, **measured, "retrieval": retrieval, **judged}


def summary(metrics: dict[str, Any]) -> str:
    """One screen: metric, reference, .pte, delta."""
    llm, rows = metrics["llm"], []
    rows.append(("perplexity", llm["ppl_reference"], llm["ppl"], f"{llm['ppl_delta_pct']:+.2f}%"))
    if "quantized_program" in metrics:
        program = metrics["quantized_program"]
        rows.append(("perplexity, program on CPU", program["ppl_reference"], program["ppl"],
                     f"{program['ppl_delta_pct']:+.2f}%"))
    for task, acc in metrics["lm_eval"].items():
        rows.append((f"{task} acc", acc["acc_reference"], acc["acc"],
                     f"{acc['acc'] - acc['acc_reference']:+.3f}"))
    rows.append((".pte size (MB)", "", round(llm["pte_bytes"] / 1e6, 1), ""))
    rows.append(("decode tok/s", "", llm["decode_tok_s"], ""))
    rows.append(("prefill tok/s", "", llm["prefill_tok_s"], ""))
    if "long_prompt_decode_tok_s" in llm:
        rows.append((f"decode tok/s, {llm['long_prompt_tokens']}-token prompt", "",
                     llm["long_prompt_decode_tok_s"], ""))
    rows.append(("runner peak RSS (MB)", "", llm["peak_rss_mb"], ""))
    if "retrieval" in metrics:
        retrieval = metrics["retrieval"]
        rows.append(("retrieval recall@10", "1.0 (exact)", retrieval["recall_at_10"], ""))
        rows.append(("embedder cosine min", "1.0 (fp32)", retrieval["embed_cosine_min"], ""))
    for key in ("hit_at_1", "hit_at_k", "mrr", "answer_terms_recall", "answer_f1", "grounded",
                "repetition_rate", "evidence_hit_at_1", "abstain_recall", "false_abstain_rate",
                "unsupported_code_rate"):
        if key in metrics.get("rag", {}):
            rows.append((f"rag {key} (test)", "", metrics["rag"][key], ""))
    for key in ("hit_at_1", "hit_at_k", "mrr"):
        if key in metrics.get("rag_auto", {}):
            rows.append((f"rag_auto {key} ({metrics['rag_auto']['probes']} probes)", "",
                         metrics["rag_auto"][key], ""))
    width = max(len(r[0]) for r in rows)
    lines = [f"{'metric':<{width}}  {'reference':>10}  {'.pte':>10}  {'delta':>9}"]
    lines += [f"{a:<{width}}  {b!s:>10}  {c!s:>10}  {d:>9}" for a, b, c, d in rows]
    return "\n".join(lines)
