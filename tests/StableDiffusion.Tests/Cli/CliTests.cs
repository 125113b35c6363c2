using ILGPU;
using ILGPU.Runtime;
using System.Text.Json;
using StableDiffusion.Kernels;
using StableDiffusion.Runtime;

namespace StableDiffusion.Tests.Cli;

public class CliTests
{
    private static (int Code, string Out, string Err) Sd(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = StableDiffusion.Cli.Cli.Run(args, o, e);
        return (code, o.ToString(), e.ToString());
    }

    [Fact]
    public void Help_lists_the_commands()
    {
        var (code, stdout, _) = Sd("--help");
        Assert.Equal(0, code);
        foreach (var c in new[] { "devices", "selfcheck", "kernels", "--ptx-report", "--device" }) Assert.Contains(c, stdout);
    }

    [Fact]
    public void No_command_is_a_usage_error()
    {
        Assert.Equal(2, Sd().Code);
    }

    [Theory]
    [InlineData(new[] { "frobnicate" }, "unknown command 'frobnicate'")]
    [InlineData(new[] { "selfcheck", "--device", "tpu" }, "--device 'tpu' is not a device")]
    [InlineData(new[] { "selfcheck", "--device" }, "option --device needs a value")]
    [InlineData(new[] { "devices", "--bogus" }, "unexpected argument '--bogus'")]
    public void Usage_errors_exit_2_with_one_line(string[] args, string message)
    {
        var (code, stdout, stderr) = Sd(args);
        Assert.Equal(2, code);
        Assert.Equal("", stdout);
        Assert.StartsWith("sd: error: ", stderr);
        Assert.Contains(message, stderr);
        Assert.Single(stderr.TrimEnd().Split('\n'));
    }

    [Fact]
    public void Devices_lists_both_cpu_backends_and_the_auto_choice()
    {
        var (code, stdout, _) = Sd("devices");
        Assert.Equal(0, code);
        Assert.Contains("ILGPU CPU accelerator", stdout);
        Assert.Contains("the C# backend", stdout);
        Assert.Contains("--device auto would choose", stdout);
        var (code2, json, _) = Sd("devices", "--json");
        Assert.Equal(0, code2);
        using var doc = JsonDocument.Parse(json);
        Assert.Contains(doc.RootElement.GetProperty("devices").EnumerateArray(), d => d.GetProperty("kind").GetString() == "IlgpuCpu");
    }

    [SkippableFact]
    public void Selfcheck_refuses_a_missing_cuda_device_instead_of_falling_back()
    {
        Skip.If(NativeLibraries.Probe("cuda") is not null, "this machine has a CUDA driver");
        var (code, stdout, stderr) = Sd("selfcheck", "--device", "cuda");
        Assert.Equal(1, code);
        Assert.DoesNotContain("selfcheck on", stdout);
        Assert.StartsWith("sd: error: CUDA was requested but is not available", stderr);
        Assert.Single(stderr.TrimEnd().Split('\n'));
    }

    [Theory]
    [InlineData("ilgpu-cpu")]
    [InlineData("cpu")]
    public void Selfcheck_passes_on_both_cpu_backends(string device)
    {
        var (code, stdout, stderr) = Sd("selfcheck", "--device", device);
        Assert.True(code == 0, stdout + stderr);
        Assert.Contains(" 0 failed", stdout);
        foreach (var op in new[] { "gemm", "conv2d", "group_norm", "layer_norm", "softmax", "attention", "silu", "gelu",
                     "gelu_tanh", "quick_gelu", "geglu", "add", "mul", "scale", "upsample2x", "concat", "transpose",
                     "timestep_embedding", "embedding", "cast" })
            Assert.Contains("\n" + op + " ", stdout);
    }

    [Fact]
    public void Selfcheck_dump_writes_every_case_so_it_can_be_recomputed()
    {
        var dir = Path.Combine(Path.GetTempPath(), $"sd-dump-test-{Environment.ProcessId}");
        try
        {
            var (code, stdout, stderr) = Sd("selfcheck", "--device", "ilgpu-cpu", "--dump", dir);
            Assert.True(code == 0, stdout + stderr);
            var manifests = Directory.GetFiles(dir, "*.json").Order().ToList();
            int cases = stdout.Split('\n').Count(l => l.Contains(" ok ") || l.Contains(" FAIL "));
            Assert.Equal(cases, manifests.Count);
            float[] Bin(JsonElement spec)
            {
                var bytes = File.ReadAllBytes(Path.Combine(dir, spec.GetProperty("file").GetString()!));
                long n = spec.GetProperty("shape").EnumerateArray().Aggregate(1L, (x, d) => x * d.GetInt32());
                Assert.Equal(4 * n, bytes.Length);
                return Enumerable.Range(0, (int)n).Select(i => BitConverter.ToSingle(bytes, 4 * i)).ToArray();
            }
            int[] Shape(JsonElement spec) => spec.GetProperty("shape").EnumerateArray().Select(d => d.GetInt32()).ToArray();
            int recomputed = 0;
            foreach (var path in manifests)
            {
                using var doc = JsonDocument.Parse(File.ReadAllText(path));
                var m = doc.RootElement;
                var inputs = m.GetProperty("inputs").EnumerateArray().ToDictionary(i => i.GetProperty("name").GetString()!, i => i);
                var output = Bin(m.GetProperty("output"));
                foreach (var i in inputs.Values) Bin(i);
                if (m.GetProperty("op").GetString() != "conv2d") continue;
                // The dumped inputs are what the device read: the host reference on them reproduces the dumped output.
                var p = m.GetProperty("params");
                var x = Shape(inputs["x"]);
                var w = Shape(inputs["weight"]);
                var expected = Reference.Conv2d(Bin(inputs["x"]), x[0], x[1], x[2], x[3], Bin(inputs["weight"]), w[0], w[1], w[2],
                    Bin(inputs["bias"]), p.GetProperty("stride").GetInt32(), p.GetProperty("padding").GetInt32(),
                    inputs.TryGetValue("residual", out var r) ? Bin(r) : null);
                Assert.True(Reference.RelativeError(output, expected) <= m.GetProperty("tolerance").GetDouble(), path);
                recomputed++;
            }
            Assert.True(recomputed >= 2);
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
        }
    }

    [Fact]
    public void Debug_launch_needs_cuda()
    {
        var (code, _, stderr) = Sd("debug", "--what", "launch", "--device", "cpu");
        Assert.Equal(1, code);
        Assert.Contains("needs CUDA", stderr);
    }

    [Fact]
    public void Launch_probe_kernels_compile_to_ptx_and_fill_dynamic_shared_memory()
    {
        foreach (var m in new Action<StableDiffusion.Cli.LaunchProbe.ProbeArgs>[] { StableDiffusion.Cli.LaunchProbe.Empty, StableDiffusion.Cli.LaunchProbe.FillShared })
            Assert.Contains(".entry", PtxTools.CompilePtx(new KernelEntry("launch_probe", "", m.Method)));
        using var device = ComputeDevice.Open("ilgpu-cpu", TextWriter.Null);
        var acc = device.Accelerator;
        using var o = Tensor.FromInts(device, [-1, 0, 0], 3);
        var fill = acc.LoadKernel<StableDiffusion.Cli.LaunchProbe.ProbeArgs>(StableDiffusion.Cli.LaunchProbe.FillShared);
        Assert.True(fill.TryGetKernel(out _)); // the route to CudaKernel.FunctionPtr on CUDA
        fill(acc.DefaultStream, new ILGPU.KernelConfig(1, Math.Min(16, acc.MaxNumThreadsPerGroup), ILGPU.SharedMemoryConfig.RequestDynamic<int>(1000)),
            new StableDiffusion.Cli.LaunchProbe.ProbeArgs { Out = o.I32, N = 1000 });
        acc.DefaultStream.Synchronize();
        Assert.Equal(new float[] { 1000, 0, 1 }, o.ToFloatArray());
    }

    [Fact]
    public void Kernels_lists_the_cuda_catalog()
    {
        var (code, stdout, _) = Sd("kernels");
        Assert.Equal(0, code);
        Assert.Equal(KernelRuntime.CudaCatalog().Count, stdout.TrimEnd().Split('\n').Length);
    }

    [Fact]
    public void Ptx_report_without_ptxas_says_so_and_fails()
    {
        var saved = Environment.GetEnvironmentVariable("SD_TOOLS_PATH");
        var savedPtxas = Environment.GetEnvironmentVariable("SD_PTXAS");
        try
        {
            Environment.SetEnvironmentVariable("SD_TOOLS_PATH", "/nonexistent-sd-tools");
            Environment.SetEnvironmentVariable("SD_PTXAS", null);
            var (code, _, stderr) = Sd("kernels", "--ptx-report");
            Assert.Equal(1, code);
            Assert.Contains("ptxas was not found", stderr);
        }
        finally
        {
            Environment.SetEnvironmentVariable("SD_TOOLS_PATH", saved);
            Environment.SetEnvironmentVariable("SD_PTXAS", savedPtxas);
        }
    }

    [SkippableFact]
    public void Ptx_report_json_has_every_kernel_without_spills()
    {
        Skip.If(PtxTools.FindTool("ptxas") is null || PtxTools.FindTool("cuobjdump") is null, "ptxas/cuobjdump not installed");
        var (code, stdout, stderr) = Sd("kernels", "--ptx-report", "--json");
        Assert.True(code == 0, stderr);
        using var doc = JsonDocument.Parse(stdout);
        var rows = doc.RootElement.EnumerateArray().ToList();
        Assert.Equal(KernelRuntime.CudaCatalog().Count, rows.Count);
        foreach (var r in rows)
        {
            foreach (var key in new[] { "kernel", "config", "registers", "shared_bytes", "stack_bytes", "spill_bytes", "hmma" })
                Assert.True(r.TryGetProperty(key, out _), $"missing {key}");
            Assert.Equal(0, r.GetProperty("spill_bytes").GetInt32());
            Assert.True(r.GetProperty("registers").GetInt32() > 0);
        }
    }
}
