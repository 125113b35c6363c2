using System.Text.Json;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Backends.OpenCL;
using ILGPU.Runtime.OpenCL;
using StableDiffusion.Kernels;
using StableDiffusion.Runtime;
using StableDiffusion.TestSupport;
using Xunit.Abstractions;

namespace StableDiffusion.Tests.Kernels;

/// <summary>
/// The OpenCL path without a device: every kernel instantiation of the catalog is converted to OpenCL C by ILGPU's
/// CLBackend for vendors Intel and Other and, where clang-15 is installed (.ci/run installs it and sets
/// SD_REQUIRE_CLANG=1), compiled as OpenCL C 2.0 for spir64 with warnings as errors. Also: no kernel needs sub-group
/// functions on non-Intel devices, and every barrier fences local (shared) memory.
/// </summary>
public sealed class OpenClTests(ITestOutputHelper output) : IDisposable
{
    private readonly string tempDir = Path.Combine(Path.GetTempPath(), $"sd-opencl-tests-{Guid.NewGuid():N}");

    public void Dispose()
    {
        if (Directory.Exists(tempDir)) Directory.Delete(tempDir, recursive: true);
    }

    public static TheoryData<string, string, string> CatalogByVendor()
    {
        var data = new TheoryData<string, string, string>();
        foreach (var e in KernelRuntime.PortableCatalog())
            foreach (var p in OpenClTools.Profiles)
                data.Add(e.Kernel, e.Config, p.Name);
        return data;
    }

    private static KernelEntry Find(string kernel, string config) =>
        KernelRuntime.PortableCatalog().Single(e => e.Kernel == kernel && e.Config == config);

    private static OpenClProfile Profile(string vendor) => OpenClTools.Profiles.Single(p => p.Name == vendor);

    /// <summary>clang, or a skip; with SD_REQUIRE_CLANG=1 (CI) a missing clang fails the test instead.</summary>
    private static string Clang()
    {
        var clang = OpenClTools.FindClang();
        if (clang is null)
        {
            Assert.False(Environment.GetEnvironmentVariable("SD_REQUIRE_CLANG") == "1",
                "SD_REQUIRE_CLANG=1 but clang-15 was not found (apt-get install clang-15, or set SD_CLANG)");
            Skip.If(true, "clang-15 not installed (apt-get install clang-15, or set SD_CLANG)");
        }
        return clang!;
    }

    private static IReadOnlyList<OpenClCheckRow>? compiled;

    private static IReadOnlyList<OpenClCheckRow> AllCompiled(string clang) =>
        compiled ??= OpenClTools.Check(KernelRuntime.PortableCatalog(), clang);

    private string WriteTemp(string name, string source)
    {
        Directory.CreateDirectory(tempDir);
        var path = Path.Combine(tempDir, name);
        File.WriteAllText(path, source);
        return path;
    }

    [Theory]
    [MemberData(nameof(CatalogByVendor))]
    public void Kernel_converts_to_opencl_c(string kernel, string config, string vendor)
    {
        var source = OpenClTools.Convert(Find(kernel, config), Profile(vendor));
        Assert.Contains("kernel void", source);
        output.WriteLine($"{kernel} [{config}] vendor {vendor}: {source.Length} characters of OpenCL C");
    }

    [SkippableTheory]
    [MemberData(nameof(CatalogByVendor))]
    public void Kernel_compiles_with_clang_as_opencl_c_2_0(string kernel, string config, string vendor)
    {
        var clang = Clang();
        // The whole catalog is compiled on first use, clang running in parallel; each case reads its row.
        var row = AllCompiled(clang).Single(r => r.Kernel == kernel && r.Config == config && r.Vendor == vendor);
        Assert.True(row.Converted, $"{kernel} [{config}] vendor {vendor}: ILGPU could not convert it: {row.Error}");
        Assert.True(row.Compiled, $"{kernel} [{config}] vendor {vendor}: clang: {row.Error}");
    }

    [Fact]
    public void No_kernel_uses_sub_group_functions_for_vendor_Other()
    {
        // The kernels reduce through shared memory (Reductions.cs); ILGPU can emit warp shuffles for OpenCL only
        // as intel_sub_group_shuffle*, and AMD/NVIDIA-class devices need kernels without them.
        var offenders = KernelRuntime.PortableCatalog()
            .Select(e => (e, calls: OpenClTools.SubGroupCalls(OpenClTools.Convert(e, OpenClTools.Other))))
            .Where(x => x.calls.Count > 0)
            .Select(x => $"{x.e.Kernel} [{x.e.Config}]: {string.Join(", ", x.calls)}")
            .ToList();
        Assert.True(offenders.Count == 0, "sub-group calls for vendor Other: " + string.Join("; ", offenders));
    }

    [Fact]
    public void Every_barrier_fences_local_memory()
    {
        var withShared = new HashSet<string>
        {
            "gemm_tiled", "conv2d_implicit_gemm", "group_norm_stats", "layer_norm", "softmax", "attention_flash_simt", "transpose",
        };
        foreach (var e in KernelRuntime.PortableCatalog())
        foreach (var p in OpenClTools.Profiles)
        {
            var (total, local) = OpenClTools.CountBarriers(OpenClTools.Convert(e, p));
            Assert.True(total == local, $"{e.Kernel} [{e.Config}] vendor {p.Name}: {total - local} of {total} barriers without CLK_LOCAL_MEM_FENCE");
            if (withShared.Contains(e.Kernel))
                Assert.True(total > 0, $"{e.Kernel} [{e.Config}] vendor {p.Name}: no barrier in the OpenCL C");
        }
    }

    [Fact]
    public void No_kernel_needs_fp64()
    {
        // Devices without cl_khr_fp64 (Intel Arc and Xe iGPUs, many mobile GPUs) could not build such a kernel.
        var caps = new CLCapabilityContext(float16: true, float64: false, int64_Atomics: false, genericAddressSpace: true, subGroups: false);
        var noFp64 = new OpenClProfile("Other-no-fp64", CLDeviceVendor.Other, caps, caps.Extensions);
        var failed = OpenClTools.Check(KernelRuntime.PortableCatalog(), clang: null, profiles: [noFp64])
            .Where(r => !r.Converted).ToList();
        foreach (var r in failed) output.WriteLine($"{r.Kernel} [{r.Config}]: {r.Error}");
        Assert.Empty(failed.Select(r => $"{r.Kernel} [{r.Config}]: {r.Error}"));
    }

    // ---- The checks catch what they are for. ----

    private static KernelEntry Probe(string name) =>
        new("probe", name, typeof(OpenClProbes).GetMethod(name) ?? throw new InvalidOperationException(name));

    [Fact]
    public void A_warp_shuffle_becomes_an_intel_sub_group_call_and_fails_for_vendor_Other()
    {
        var intel = OpenClTools.Convert(Probe(nameof(OpenClProbes.ProbeShuffle)), OpenClTools.Intel);
        Assert.Contains("intel_sub_group_shuffle_down", OpenClTools.SubGroupCalls(intel));
        var row = OpenClTools.Check([Probe(nameof(OpenClProbes.ProbeShuffle))], clang: null, profiles: [OpenClTools.Other]).Single();
        Assert.False(row.Converted);
        output.WriteLine($"vendor Other: {row.Error}");
    }

    [Fact]
    public void Group_Barrier_fences_only_global_memory_and_SharedBarrier_adds_the_local_fence()
    {
        var plain = OpenClTools.Convert(Probe(nameof(OpenClProbes.ProbeGroupBarrier)), OpenClTools.Other);
        var shared = OpenClTools.Convert(Probe(nameof(OpenClProbes.ProbeSharedBarrier)), OpenClTools.Other);
        Assert.Equal((1, 0), OpenClTools.CountBarriers(plain)); // ILGPU: work_group_barrier(CLK_GLOBAL_MEM_FENCE)
        Assert.Equal((1, 1), OpenClTools.CountBarriers(shared));
        var line = shared.Split('\n').Single(l => l.Contains("work_group_barrier"));
        output.WriteLine(line.Trim());
        Assert.Matches(@"work_group_barrier\s*\(\s*CLK_LOCAL_MEM_FENCE\s*\|\s*CLK_GLOBAL_MEM_FENCE\s*\)", line);
    }

    [Fact]
    public void SharedBarrier_is_the_same_PTX_as_Group_Barrier()
    {
        static string Normal(string ptx, string name) =>
            System.Text.RegularExpressions.Regex.Replace(ptx.Replace(name, "KERNEL"), @"_\d+", "_N");
        var plain = PtxTools.CompilePtx(Probe(nameof(OpenClProbes.ProbeGroupBarrier)));
        var shared = PtxTools.CompilePtx(Probe(nameof(OpenClProbes.ProbeSharedBarrier)));
        Assert.Contains("bar.sync", shared);
        Assert.Equal(Normal(plain, nameof(OpenClProbes.ProbeGroupBarrier)), Normal(shared, nameof(OpenClProbes.ProbeSharedBarrier)));
    }

    [Fact]
    public void SharedBarrier_synchronises_on_the_cpu_accelerator()
    {
        var acc = Devices.Device.Accelerator;
        var k = acc.LoadKernel<ArrayView<float>>(OpenClProbes.ProbeSharedBarrier);
        using var buf = acc.Allocate1D(Enumerable.Range(0, 64).Select(i => (float)i).ToArray());
        k(acc.DefaultStream, new KernelConfig(2, 32), buf.View);
        acc.Synchronize();
        var expected = Enumerable.Range(0, 64).Select(i => (float)(i / 32 * 32 + 31 - i % 32));
        Assert.Equal(expected, buf.GetAsArray1D());
    }

    [SkippableFact]
    public void Clang_rejects_half_without_the_fp16_pragma_and_intel_shuffles_for_vendor_Other()
    {
        var clang = Clang();
        var fp16 = OpenClTools.Convert(Find("softmax", "fp16 32x4"), OpenClTools.Other);
        Assert.Contains("#pragma OPENCL EXTENSION cl_khr_fp16 : enable", fp16);
        Assert.Null(OpenClTools.Compile(clang, OpenClTools.Other, WriteTemp("fp16.cl", fp16)));
        var noPragma = fp16.Replace("#pragma OPENCL EXTENSION cl_khr_fp16 : enable", "");
        var error = OpenClTools.Compile(clang, OpenClTools.Other, WriteTemp("fp16-no-pragma.cl", noPragma));
        output.WriteLine(error);
        Assert.Contains("half", error);

        var shuffle = OpenClTools.Convert(Probe(nameof(OpenClProbes.ProbeShuffle)), OpenClTools.Intel);
        Assert.Null(OpenClTools.Compile(clang, OpenClTools.Intel, WriteTemp("shuffle-intel.cl", shuffle)));
        error = OpenClTools.Compile(clang, OpenClTools.Other, WriteTemp("shuffle-other.cl", shuffle));
        output.WriteLine(error);
        Assert.NotNull(error);
    }

    // ---- sd kernels --opencl-check ----

    private static (int Code, string Out, string Err) Sd(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = StableDiffusion.Cli.Cli.Run(args, o, e);
        return (code, o.ToString(), e.ToString());
    }

    [Fact]
    public void Opencl_check_without_clang_says_so_in_one_line_and_fails()
    {
        var saved = Environment.GetEnvironmentVariable("SD_TOOLS_PATH");
        var savedClang = Environment.GetEnvironmentVariable("SD_CLANG");
        try
        {
            Environment.SetEnvironmentVariable("SD_TOOLS_PATH", "/nonexistent-sd-tools");
            Environment.SetEnvironmentVariable("SD_CLANG", null);
            var (code, stdout, stderr) = Sd("kernels", "--opencl-check");
            Assert.Equal(1, code);
            Assert.Equal("", stdout);
            Assert.Single(stderr.TrimEnd().Split('\n'));
            Assert.Contains("clang-15 was not found", stderr);
        }
        finally
        {
            Environment.SetEnvironmentVariable("SD_TOOLS_PATH", saved);
            Environment.SetEnvironmentVariable("SD_CLANG", savedClang);
        }
    }

    [SkippableFact]
    public void Opencl_check_json_has_every_kernel_for_both_vendors_all_compiled()
    {
        Clang();
        var (code, stdout, stderr) = Sd("kernels", "--opencl-check", "--json");
        Assert.True(code == 0, stderr + stdout);
        using var doc = JsonDocument.Parse(stdout);
        var rows = doc.RootElement.EnumerateArray().ToList();
        Assert.Equal(KernelRuntime.PortableCatalog().Count * 2, rows.Count);
        foreach (var r in rows)
        {
            Assert.Equal(["kernel", "config", "vendor", "converted", "compiled", "error"], r.EnumerateObject().Select(p => p.Name));
            Assert.True(r.GetProperty("converted").GetBoolean());
            Assert.True(r.GetProperty("compiled").GetBoolean(), r.GetProperty("error").ToString());
            Assert.Equal(JsonValueKind.Null, r.GetProperty("error").ValueKind);
        }
        Assert.Equal(["Intel", "Other"], rows.Select(r => r.GetProperty("vendor").GetString()).Distinct().Order());
    }

    [Fact]
    public void Opencl_check_rejects_unknown_arguments()
    {
        var (code, _, stderr) = Sd("kernels", "--opencl-check", "--bogus");
        Assert.Equal(2, code);
        Assert.Contains("unexpected argument '--bogus'", stderr);
    }
}

/// <summary>Small kernels that show what the OpenCL checks catch.</summary>
public static class OpenClProbes
{
    public static void ProbeShuffle(ArrayView<float> a)
    {
        int i = Grid.GlobalIndex.X;
        a[i] = Warp.ShuffleDown(a[i], 1);
    }

    public static void ProbeGroupBarrier(ArrayView<float> a)
    {
        var s = SharedMemory.Allocate<float>(64);
        s[Group.IdxX] = a[Grid.GlobalIndex.X];
        Group.Barrier();
        a[Grid.GlobalIndex.X] = s[Group.DimX - 1 - Group.IdxX];
    }

    public static void ProbeSharedBarrier(ArrayView<float> a)
    {
        var s = SharedMemory.Allocate<float>(64);
        s[Group.IdxX] = a[Grid.GlobalIndex.X];
        SharedBarrier.Sync();
        a[Grid.GlobalIndex.X] = s[Group.DimX - 1 - Group.IdxX];
    }
}
