using TorchSharp;
using TorchTensor = TorchSharp.torch.Tensor;

namespace StableDiffusion.TestSupport.Torch;

/// <summary>
/// Runs one block of a libtorch reference in its own dispose scope and keeps only its result, so a full-size model's
/// float64 intermediates (attention scores of 4096² per head) are freed block by block instead of at the test's end.
/// </summary>
internal static class Scoped
{
    public static TorchTensor Run(Func<TorchTensor> block)
    {
        using var scope = torch.NewDisposeScope();
        return scope.MoveToOuter(block());
    }
}
