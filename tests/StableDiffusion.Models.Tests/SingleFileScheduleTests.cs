using StableDiffusion.IO;
using StableDiffusion.Runtime;
using StableDiffusion.TestSupport;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace StableDiffusion.Models.Tests;

/// <summary>
/// The DDPM buffers of a random single file against LDM's register_schedule computed in libtorch: make_beta_schedule
/// "linear" (linspace of the square roots, squared) in float64, then cast to float32, as LDM registers them. They
/// must be float32 in an fp16 file too: stable-diffusion.cpp builds its sigmas from the file's alphas_cumprod, and
/// fp16-rounded values give it another noise schedule than the model's.
/// </summary>
public class SingleFileScheduleTests(ITestOutputHelper output)
{
    [Fact]
    public void Fp16SingleFileCarriesLdmsScheduleInFloat32()
    {
        using var dir = new TempFolder();
        var path = System.IO.Path.Combine(dir.Path, "sd21-tiny.safetensors");
        RandomModel.Write(Presets.Sd21Tiny, RandomModelFormat.SingleFile, WeightDType.F16, 3, path);
        using var file = WeightFile.Open(path);

        const int n = 1000;
        var betas = torch.linspace(Math.Sqrt(0.00085), Math.Sqrt(0.012), n, dtype: ScalarType.Float64).pow(2);
        var alphas = 1.0 - betas;
        var ac = torch.cumprod(alphas, 0);
        var prev = torch.cat([torch.ones(1, dtype: ScalarType.Float64), ac[..(n - 1)]]);
        var variance = betas * (1.0 - prev) / (1.0 - ac);
        var expected = new Dictionary<string, torch.Tensor>
        {
            ["betas"] = betas,
            ["alphas_cumprod"] = ac,
            ["alphas_cumprod_prev"] = prev,
            ["sqrt_alphas_cumprod"] = ac.sqrt(),
            ["sqrt_one_minus_alphas_cumprod"] = (1.0 - ac).sqrt(),
            ["log_one_minus_alphas_cumprod"] = (1.0 - ac).log(),
            ["sqrt_recip_alphas_cumprod"] = (1.0 / ac).sqrt(),
            ["sqrt_recipm1_alphas_cumprod"] = (1.0 / ac - 1.0).sqrt(),
            ["posterior_variance"] = variance,
            ["posterior_log_variance_clipped"] = variance.clamp_min(1e-20).log(),
            ["posterior_mean_coef1"] = betas * prev.sqrt() / (1.0 - ac),
            ["posterior_mean_coef2"] = (1.0 - prev) * alphas.sqrt() / (1.0 - ac),
        };
        Assert.Equal(NameMap.DdpmBuffers.Order(StringComparer.Ordinal), expected.Keys.Order(StringComparer.Ordinal));

        var oracle = new Oracle(output);
        foreach (var (name, reference) in expected)
        {
            var info = file.Find(name) ?? throw new KeyNotFoundException(name);
            Assert.True(info.DType == WeightDType.F32, $"{name} is {info.DType.Name()}; LDM keeps the schedule buffers in float32");
            Assert.Equal([n], info.Shape);
            var got = file.ReadFloat32(info);
            var want = reference.to_type(ScalarType.Float32).data<float>().ToArray();
            double err = global::StableDiffusion.Kernels.Reference.RelativeError(got, want);
            oracle.Record("ldm_schedule", name, DType.F32, err, 1.2e-7);
            // The same float64 arithmetic cast once: equal values, at most a last-bit difference from libm.
            for (int i = 0; i < n; i++)
                Assert.True(Math.Abs(got[i] - want[i]) <= 1.2e-7 * Math.Abs(want[i]), $"{name}[{i}] = {got[i]:R}, LDM {want[i]:R}");
        }
        // sigma_max as the file gives it to a sampler that reads it: (1 − ᾱ)/ᾱ at t = 999.
        double sigmaMax = Math.Sqrt((1 - file.ReadFloat32(file.Find("alphas_cumprod")!)[n - 1]) / file.ReadFloat32(file.Find("alphas_cumprod")!)[n - 1]);
        Assert.InRange(sigmaMax, 14.6146, 14.6147);
    }
}
