using System.Buffers.Binary;
using StableDiffusion.IO;

namespace StableDiffusion.Models;

/// <summary>
/// Deterministic random weights for a module tree, for tests and for benchmarking without downloads.
/// Every value depends only on (seed, parameter path, index), never on declaration order. Initialisation keeps
/// every part of the network mattering (DESIGN.md §8): weights uniform with variance 1/fan_in (variance-preserving),
/// biases and norm shifts small, norm scales near 1, embeddings of unit scale.
/// </summary>
public static class RandomWeights
{
    public static void Fill(ulong seed, string path, ParamKind kind, long[] shape, Span<float> dest)
    {
        ulong state = seed ^ Fnv1a(path) ^ 0x9E3779B97F4A7C15UL;
        long fanIn = shape.Length > 1 ? shape.Skip(1).Aggregate(1L, (a, b) => a * b) : Math.Max(1, shape[0]);
        (float center, float halfWidth) = kind switch
        {
            ParamKind.Weight => (0f, MathF.Sqrt(3f / fanIn)),
            ParamKind.Bias => (0f, 0.1f),
            ParamKind.NormScale => (1f, 0.1f),
            ParamKind.NormBias => (0f, 0.1f),
            _ => (0f, 1f),
        };
        for (int i = 0; i < dest.Length; i++)
        {
            float u = (float)((SplitMix64(ref state) >> 40) * (1.0 / (1UL << 24))); // [0, 1)
            dest[i] = center + (2f * u - 1f) * halfWidth;
        }
    }

    public static float[] Generate(ulong seed, string path, Parameter p)
    {
        var a = new float[p.ElementCount];
        Fill(seed, path, p.Kind, p.Shape, a);
        return a;
    }

    /// <summary>
    /// Safetensors entries for every parameter of <paramref name="module"/>, named through <paramref name="rename"/>
    /// (identity for diffusers files), generated while the file is written (no full copy in memory).
    /// </summary>
    public static IEnumerable<SafetensorsEntry> Entries(Module module, ulong seed, WeightDType dtype, string prefix = "",
        Func<string, string>? rename = null)
    {
        if (dtype is not (WeightDType.F32 or WeightDType.F16))
            throw new UsageException($"random weights can be fp32 or fp16, not {dtype.Name()}");
        foreach (var (path, p) in module.NamedParameters())
        {
            var name = rename?.Invoke(prefix + path) ?? prefix + path;
            var captured = (path, p);
            yield return new SafetensorsEntry(name, dtype, p.Shape, stream => Write(stream, seed, captured.path, captured.p, dtype));
        }
    }

    private static void Write(Stream stream, ulong seed, string path, Parameter p, WeightDType dtype)
    {
        const int chunk = 1 << 20;
        var values = Generate(seed, path, p);
        int size = dtype.SizeInBytes();
        var buffer = new byte[Math.Min(values.Length, chunk) * size];
        for (int start = 0; start < values.Length; start += chunk)
        {
            int n = Math.Min(chunk, values.Length - start);
            var span = buffer.AsSpan(0, n * size);
            for (int i = 0; i < n; i++)
            {
                if (dtype == WeightDType.F32)
                    BinaryPrimitives.WriteSingleLittleEndian(span[(i * 4)..], values[start + i]);
                else
                    BinaryPrimitives.WriteHalfLittleEndian(span[(i * 2)..], (Half)values[start + i]);
            }
            stream.Write(span);
        }
    }

    private static ulong SplitMix64(ref ulong x)
    {
        ulong z = x += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    private static ulong Fnv1a(string s)
    {
        ulong h = 14695981039346656037UL;
        foreach (char c in s)
        {
            h ^= c;
            h *= 1099511628211UL;
        }
        return h;
    }
}
