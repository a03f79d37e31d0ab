"""relayllm.training: everything that sits on top of the edge SDK and the cloud service.

    data/     the built-in task, JSONL benchmarks, prompts, grading
    models/   the default tiny model pair and GGUF export
    relay/    warm-up, GRPO, rewards, configs, `relayllm train`
    routers/  R2R and CITER token routers (training and ONNX export)
    eval/     the evaluation harness, `relayllm eval`
    bench/    benchmarks against the raw engines, `relayllm bench`
    demo.py   `relayllm demo`
"""
