using ILGPU.Backends;
using StableDiffusion.Kernels;
using StableDiffusion.Runtime;

namespace StableDiffusion.Cli;

/// <summary>
/// Hidden diagnostics for kernel development on a GPU: `sd debug --what mma` runs the tensor-core GEMM on known inputs;
/// `sd debug --what launch [--json F]` measures launch overhead, shared memory above 48 KB and the libcuda file.
/// </summary>
public static class DebugCommand
{
    public struct ProbeArgs
    {
        public ILGPU.ArrayView<int> Out;
    }

    public static void ProbeIsSupported(ProbeArgs p)
    {
        if (!ILGPU.Runtime.Cuda.CudaAsm.IsSupported) return;
        p.Out[0] = 1;
    }

    public static void ProbeDynamicLength(ProbeArgs p)
    {
        var s = ILGPU.SharedMemory.GetDynamic<Int4>();
        if (s.Length < 0) return;
        p.Out[1] = (int)s.Length;
    }

    public static void ProbeCurrentType(ProbeArgs p)
    {
        p.Out[2] = (int)ILGPU.Runtime.Accelerator.CurrentType;
    }

    internal static int Run(Args a, TextWriter stdout)
    {
        var what = a.Value("--what") ?? "mma";
        var deviceName = a.Value("--device") ?? "auto";
        var dump = a.Value("--dump");
        var json = a.Value("--json");
        a.CheckDone();
        using var device = ComputeDevice.Open(deviceName, stdout);
        if (what == "launch") return LaunchProbe.Run(device, json, stdout);
        if (what == "probe")
        {
            using var o = Tensor.FromInts(device, [-7, -7, -7], 3);
            var rt = new KernelRuntime(device);
            var args = new ProbeArgs { Out = o.I32 };
            rt.Launch("probe", ProbeIsSupported, new ILGPU.KernelConfig(1, 32), args);
            rt.Launch("probe", ProbeDynamicLength, new ILGPU.KernelConfig(1, 32, ILGPU.SharedMemoryConfig.RequestDynamic<Int4>(64)), args);
            rt.Launch("probe", ProbeCurrentType, new ILGPU.KernelConfig(1, 32), args);
            stdout.WriteLine($"probe: IsSupported wrote {o.ToFloatArray()[0]}, dynamic length {o.ToFloatArray()[1]}, CurrentType {o.ToFloatArray()[2]} (Cuda = {(int)ILGPU.Runtime.AcceleratorType.Cuda})");
            foreach (var (name, m) in new[] { ("issupported", (Action<ProbeArgs>)ProbeIsSupported), ("dynlen", ProbeDynamicLength), ("curtype", ProbeCurrentType) })
            {
                var ck = device.Accelerator.GetBackend().Compile(ILGPU.Backends.EntryPoints.EntryPointDescription.FromExplicitlyGroupedKernel(m.Method), default);
                if (dump is not null) File.WriteAllText(dump + "." + name + ".ptx", ((ILGPU.Backends.PTX.PTXCompiledKernel)ck).PTXAssembly);
            }
            return 0;
        }
        if (dump is not null)
        {
            // The PTX this device's own backend makes of the tensor-core GEMM (it can differ from the offline report's).
            var entry = KernelRuntime.CudaCatalog().First(e => e.Kernel == "gemm_mma");
            var compiled = device.Accelerator.GetBackend().Compile(
                ILGPU.Backends.EntryPoints.EntryPointDescription.FromExplicitlyGroupedKernel(entry.Method), default);
            File.WriteAllText(dump, ((ILGPU.Backends.PTX.PTXCompiledKernel)compiled).PTXAssembly);
            stdout.WriteLine($"wrote {dump}");
        }
        device.Pool.PoisonOnRent = true;
        if (device.Kind == DeviceKind.Cpu) throw new UsageException("sd debug inspects the ILGPU kernels; use --device cuda or ilgpu-cpu");
        var ops = new IlgpuOps(device);
        foreach (var (m, n, k) in new[] { (128, 128, 32), (128, 128, 64), (130, 70, 40) })
        {
            var av = new float[m * k];
            var bv = new float[n * k];
            for (int i = 0; i < m; i++) for (int j = 0; j < k; j++) av[i * k + j] = (i % 3) + 1;       // row i: (i%3)+1
            for (int i = 0; i < n; i++) for (int j = 0; j < k; j++) bv[i * k + j] = j % 2 == 0 ? 1 : 0.5f; // sum over k: 0.75k
            using var ta = Tensor.FromArray(device, av, DType.F16, m, k);
            using var tb = Tensor.FromArray(device, bv, DType.F16, n, k);
            using var tc = Tensor.Empty(device, DType.F16, m, n);
            Gemm.Run(ops.Runtime, new GemmSpec(m, n, k) { TransB = true }, ta, tb, tc, variant: what == "simt" ? GemmVariant.Tile64 : GemmVariant.TensorCore);
            var c = tc.ToFloatArray();
            int nan = c.Count(float.IsNaN);
            int wrong = 0;
            for (int i = 0; i < m; i++) for (int j = 0; j < n; j++) if (Math.Abs(c[i * n + j] - ((i % 3) + 1) * 0.75f * k) > 0.01f * k) wrong++;
            stdout.WriteLine($"{ops.Runtime.LastFamily} {m}x{n}x{k}: NaN {nan}, wrong {wrong} of {m * n}; c[0..4] = {string.Join(", ", c.Take(4))}; " +
                             $"c[row 1] = {c[n]}, c[row 2] = {c[2 * n]}, expect {0.75f * k}, {1.5f * k}, {2.25f * k}");
        }
        return 0;
    }
}
