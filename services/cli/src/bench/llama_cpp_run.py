"""The peer `companion bench llm` measures against: llama.cpp as its Python binding builds it.

Reads one JSON object from the file its argument names: the GGUF file, threads, context
length, the prompt's token ids (companion's chat template and tokenizer made them, so both
sides compute the same tokens), the stop token ids and the token budget. Loads the model and
prints its load time as a JSON line; then, for every line it reads, runs a round and prints
its times and generated token ids as a JSON line. A round computes the whole prompt in batches
of 512 and generates greedily (arg-max, first on ties) until a stop token or the budget, as
companion's llama.cpp backend does.
"""

import ctypes
import json
import sys
import time

import llama_cpp
import numpy as np

BATCH = 512


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as f:
        job = json.load(f)
    threads = int(job["threads"])
    prompt = [int(t) for t in job["prompt"]]
    stops = {int(t) for t in job["stop"]}
    budget = int(job["max_new_tokens"])

    started = time.perf_counter()
    llama_cpp.llama_backend_init()
    model = llama_cpp.llama_model_load_from_file(
        job["model"].encode(), llama_cpp.llama_model_default_params()
    )
    if not model:
        sys.exit(f"llama.cpp cannot load {job['model']}")
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = int(job["context_length"])
    params.n_batch = BATCH
    params.n_ubatch = BATCH
    params.n_threads = threads
    params.n_threads_batch = threads
    ctx = llama_cpp.llama_init_from_model(model, params)
    if not ctx:
        sys.exit("llama.cpp cannot create a context")
    vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
    batch = llama_cpp.llama_batch_init(BATCH, 0, 1)
    load_ms = (time.perf_counter() - started) * 1000.0
    print(json.dumps({"load_ms": load_ms}), flush=True)

    def feed(tokens: list, start: int) -> int:
        """Computes `tokens` at positions from `start`; the arg-max of the last one's logits."""
        for offset in range(0, len(tokens), BATCH):
            chunk = tokens[offset : offset + BATCH]
            batch.n_tokens = len(chunk)
            for i, token in enumerate(chunk):
                batch.token[i] = token
                batch.pos[i] = start + offset + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = i + 1 == len(chunk)
            if llama_cpp.llama_decode(ctx, batch) != 0:
                sys.exit("llama_decode failed")
        logits = llama_cpp.llama_get_logits_ith(ctx, len(chunk) - 1)
        row = np.ctypeslib.as_array(ctypes.cast(logits, ctypes.POINTER(ctypes.c_float)), (vocab,))
        return int(np.argmax(row))

    for _ in sys.stdin:
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        started = time.perf_counter()
        token = feed(prompt, 0)
        prompt_ms = (time.perf_counter() - started) * 1000.0
        started = time.perf_counter()
        generated = []
        while True:
            generated.append(token)
            if token in stops or len(generated) >= budget:
                break
            token = feed([token], len(prompt) + len(generated) - 1)
        generate_ms = (time.perf_counter() - started) * 1000.0
        print(
            json.dumps(
                {"prompt_ms": prompt_ms, "generate_ms": generate_ms, "tokens": generated}
            ),
            flush=True,
        )

    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)


if __name__ == "__main__":
    main()
