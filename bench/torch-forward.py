"""diffusers/torch CPU forward of a FluxTransformer2DModel, for `make bench`.

Builds the model with random weights (no download) in float32 and times one
transformer forward on the CPU: the baseline of the fx-calib forward benchmark.
Prints one line: "torch_forward ms=<best> mean_ms=<mean> reps=<n> threads=<t> torch=<v> diffusers=<v>".

usage: python3 bench/torch-forward.py HIDDEN DOUBLE SINGLE IMG_TOKENS TXT_TOKENS [REPS] [THREADS]
"""
import sys
import time


def main():
    if len(sys.argv) < 6:
        sys.stderr.write(__doc__)
        return 2
    hidden, n_double, n_single, n_img, n_txt = (int(a) for a in sys.argv[1:6])
    reps = int(sys.argv[6]) if len(sys.argv) > 6 else 2
    threads = int(sys.argv[7]) if len(sys.argv) > 7 else 2

    import torch
    import diffusers
    from diffusers import FluxTransformer2DModel

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    head_dim = 128
    model = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=n_double,
        num_single_layers=n_single,
        attention_head_dim=head_dim,
        num_attention_heads=hidden // head_dim,
        joint_attention_dim=4096,
        pooled_projection_dim=768,
        guidance_embeds=True,
        axes_dims_rope=(16, 56, 56),
    ).to(torch.float32).eval()

    side = int(round(n_img ** 0.5))
    img_ids = torch.zeros(n_img, 3)
    img_ids[:, 1] = torch.arange(n_img) // side
    img_ids[:, 2] = torch.arange(n_img) % side
    txt_ids = torch.zeros(n_txt, 3)
    inputs = dict(
        hidden_states=torch.randn(1, n_img, 64),
        encoder_hidden_states=torch.randn(1, n_txt, 4096),
        pooled_projections=torch.randn(1, 768),
        timestep=torch.tensor([1.0]),
        img_ids=img_ids,
        txt_ids=txt_ids,
        guidance=torch.tensor([3.5]),
        return_dict=False,
    )
    times = []
    with torch.inference_mode():
        model(**inputs)  # warm-up
        for _ in range(reps):
            t0 = time.perf_counter()
            out = model(**inputs)[0]
            times.append(time.perf_counter() - t0)
    if not torch.isfinite(out).all():
        sys.stderr.write("torch-forward: non-finite output\n")
        return 1
    print("torch_forward ms=%.1f mean_ms=%.1f reps=%d threads=%d torch=%s diffusers=%s"
          % (1e3 * min(times), 1e3 * sum(times) / len(times), reps, threads,
             torch.__version__, diffusers.__version__))
    return 0


if __name__ == "__main__":
    sys.exit(main())
