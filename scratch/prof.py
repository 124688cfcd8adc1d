import time, torch, m2ib, sys
from torch.profiler import profile, ProfilerActivity
b = m2ib.load("random-vit-b-32", device="cuda")
import benchmarks.bench_m2ib_speed as B
for bs, prec in [(1, "fp32"), (128, "bf16")]:
    images, texts = B.make_inputs(b, bs)
    pv = b.preprocess_images([m2ib.inputs.load_image(i)[0] for i in images]).pixel_values
    kw = dict(pixel_values=pv, batch_size=bs, progress=False, precision=prec)
    m2ib.explain(b, None, texts, **kw); torch.cuda.synchronize()
    for mods in [("image",), ("text",)]:
        t = time.perf_counter(); m2ib.explain(b, None, texts, modalities=mods, **kw); torch.cuda.synchronize(); print(bs, prec, mods, time.perf_counter() - t)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        m2ib.explain(b, None, texts, **kw); torch.cuda.synchronize()
    print(p.key_averages().table(sort_by="self_cuda_time_total", row_limit=25))
    print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
