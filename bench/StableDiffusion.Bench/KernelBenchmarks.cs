using BenchmarkDotNet.Attributes;
using StableDiffusion.Kernels;
using StableDiffusion.Runtime;

namespace StableDiffusion.Bench;

/// <summary>The device and suite a run uses (BenchmarkDotNet runs in process, so a static is shared).</summary>
public static class Suite
{
    public static IOps? Ops { get; set; }
    public static bool Quick { get; set; }
    public static DeviceCeilings? Ceilings { get; set; }

    /// <summary>Which kernel variant each case launched (by case description).</summary>
    public static Dictionary<string, string> Kernels { get; } = [];
}

/// <summary>One benchmark per suite case: the op on uploaded random inputs, synchronised.</summary>
public class KernelBenchmarks
{
    private Action launch = () => { };
    private List<Tensor> inputs = [];

    public static IEnumerable<BenchCase> Cases() => KernelBench.Suite(Suite.Quick);

    [ParamsSource(nameof(Cases))]
    public BenchCase Case { get; set; } = null!;

    [GlobalSetup]
    public void Setup()
    {
        var ops = Suite.Ops ?? throw new InvalidOperationException("no device opened");
        (launch, inputs) = KernelBench.Prepare(ops, Case);
        launch(); // compile
        ops.Device.Synchronize();
        Suite.Kernels[Case.Describe()] = KernelBench.Family(ops);
    }

    [Benchmark]
    public void Run()
    {
        launch();
        Suite.Ops!.Device.Synchronize();
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (var t in inputs) t.Dispose();
        inputs = [];
    }
}
