using StableDiffusion.Kernels;
using StableDiffusion.Runtime;
using StableDiffusion.TestSupport;

namespace StableDiffusion.Tests.Kernels;

public class KernelBenchTests
{
    [Fact]
    public void The_simt_attention_case_runs_the_simt_kernel_and_only_in_the_full_suite()
    {
        var ops = Devices.Ops("test");
        var shape = new Dictionary<string, int> { ["b"] = 1, ["heads"] = 1, ["lq"] = 8, ["lk"] = 8, ["d"] = 40, ["simt"] = 1 };
        var (launch, inputs) = KernelBench.Prepare(ops, new BenchCase("attention", DType.F16, shape, 1, 1));
        try
        {
            launch();
            Assert.Equal("attention", ops.Runtime.LastFamily);
        }
        finally
        {
            foreach (var t in inputs) t.Dispose();
        }
        Assert.Contains(KernelBench.Suite(quick: false), c => c.Op == "attention" && c.Shape.ContainsKey("simt") && c.DType == DType.F16);
        Assert.DoesNotContain(KernelBench.Suite(quick: true), c => c.Shape.ContainsKey("simt"));
    }
}
