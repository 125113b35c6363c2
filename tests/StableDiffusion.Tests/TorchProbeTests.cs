using TorchSharp;

namespace StableDiffusion.Tests;

public class TorchProbeTests
{
    [Fact]
    public void LibTorchLoads()
    {
        var x = torch.ones(3, 3, dtype: torch.float64);
        Assert.Equal(9.0, x.sum().item<double>());
    }
}
