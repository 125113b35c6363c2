using StableDiffusion.IO;
using StableDiffusion.Models;
using StableDiffusion.Runtime;
using TorchSharp;
using TorchTensor = TorchSharp.torch.Tensor;

namespace StableDiffusion.TestSupport;

/// <summary>
/// Random weights for a module, written as a real safetensors file in the module's own layout, loaded back through
/// the IO layer into the module (the same path a downloaded checkpoint takes), and readable as libtorch tensors
/// holding exactly the stored values (fp16-rounded in fp16 runs) for the oracle.
/// </summary>
public sealed class TestWeights : IDisposable
{
    private readonly string dir;

    private TestWeights(string dir, WeightFile file, ComponentWeights component)
    {
        this.dir = dir;
        File = file;
        Component = component;
    }

    public WeightFile File { get; }
    public ComponentWeights Component { get; }

    /// <summary>Writes random weights for <paramref name="module"/> and loads them into it on <paramref name="ops"/>.</summary>
    /// <paramref name="fileDType"/> is the file's dtype when it differs from the compute dtype (an fp16 checkpoint run in fp32).
    public static TestWeights LoadInto(Module module, IOps ops, DType dtype, ulong seed = 1, string component = "model", WeightDType? fileDType = null)
    {
        var dir = Path.Combine(Path.GetTempPath(), "sd-test-weights-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        var path = Path.Combine(dir, "model.safetensors");
        SafetensorsWriter.Write(path, RandomWeights.Entries(module, seed, fileDType ?? (dtype == DType.F16 ? WeightDType.F16 : WeightDType.F32)));
        var file = WeightFile.Open(path);
        var w = new TestWeights(dir, file, ComponentWeights.FromFile(component, file));
        module.Load(w.Component, ops, dtype);
        return w;
    }

    /// <summary>The stored tensor <paramref name="name"/> as a float64 libtorch tensor in its checkpoint shape.</summary>
    public TorchTensor Torch(string name) => Torch(File, name);

    /// <summary>Tensor <paramref name="name"/> of <paramref name="file"/> as a float64 libtorch tensor in its stored shape.</summary>
    public static TorchTensor Torch(WeightFile file, string name)
    {
        var info = file.Find(name) ?? throw new KeyNotFoundException($"no tensor '{name}' in {file.Path}");
        var values = file.ReadFloat32(info).Select(v => (double)v).ToArray();
        return torch.tensor(values, info.Shape, dtype: torch.ScalarType.Float64);
    }

    /// <summary>Like <see cref="Torch"/>, or null when the module has no such parameter (optional biases).</summary>
    public TorchTensor? TorchOrNull(string name) => File.Find(name) is null ? null : Torch(name);

    public void Dispose()
    {
        File.Dispose();
        try
        {
            Directory.Delete(dir, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
