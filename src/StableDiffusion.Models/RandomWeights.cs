using System.Buffers;
using System.Runtime.InteropServices;
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
    private const ulong Gamma = 0x9E3779B97F4A7C15UL;

    // Values per generation chunk; chunks of one tensor are generated in parallel.
    private const int Chunk = 1 << 16;

    /// <summary>
    /// Elements [<paramref name="start"/>, start + dest.Length) of the parameter's values. SplitMix64 is a counter
    /// generator (value i mixes state0 + (i + 1)·γ), so any range can be generated on its own: chunks are independent.
    /// </summary>
    public static void Fill(ulong seed, string path, ParamKind kind, long[] shape, Span<float> dest, long start = 0)
    {
        ulong state = (seed ^ Fnv1a(path) ^ Gamma) + (ulong)start * Gamma;
        var (center, halfWidth) = Range(kind, shape);
        for (int i = 0; i < dest.Length; i++)
        {
            float u = (float)((SplitMix64(ref state) >> 40) * (1.0 / (1UL << 24))); // [0, 1)
            dest[i] = center + (2f * u - 1f) * halfWidth;
        }
    }

    private static (float Center, float HalfWidth) Range(ParamKind kind, long[] shape)
    {
        long fanIn = shape.Length > 1 ? shape.Skip(1).Aggregate(1L, (a, b) => a * b) : Math.Max(1, shape.Length == 1 ? shape[0] : 1);
        return kind switch
        {
            ParamKind.Weight => (0f, MathF.Sqrt(3f / fanIn)),
            ParamKind.Bias => (0f, 0.1f),
            ParamKind.NormScale => (1f, 0.1f),
            ParamKind.NormBias => (0f, 0.1f),
            _ => (0f, 1f),
        };
    }

    public static float[] Generate(ulong seed, string path, Parameter p)
    {
        var a = new float[p.ElementCount];
        Fill(seed, path, p.Kind, p.Shape, a);
        return a;
    }

    /// <summary>
    /// Safetensors entries for every parameter of <paramref name="module"/>, named through <paramref name="rename"/>
    /// (identity for diffusers files), generated while the file is written (no full copy in memory). Values are keyed
    /// by <paramref name="valuePrefix"/> + the parameter path (a component name keeps two components apart).
    /// </summary>
    public static IEnumerable<SafetensorsEntry> Entries(Module module, ulong seed, WeightDType dtype, string prefix = "",
        Func<string, string>? rename = null, string valuePrefix = "")
    {
        CheckDType(dtype);
        foreach (var (path, p) in module.NamedParameters())
        {
            var name = rename?.Invoke(prefix + path) ?? prefix + path;
            yield return Entry(name, seed, dtype, p.Shape, new Part(valuePrefix + path, p.Kind, p.Shape));
        }
    }

    /// <summary>One value source of a stored tensor: the values of <paramref name="Path"/> (a diffusers parameter path).</summary>
    public sealed record Part(string Path, ParamKind Kind, long[] Shape)
    {
        public long ElementCount => Shape.Aggregate(1L, (a, b) => a * b);
    }

    /// <summary>
    /// A stored tensor of shape <paramref name="shape"/> whose values are <paramref name="parts"/> one after another
    /// (one part normally; q, k and v for a fused OpenCLIP in_proj), so a tensor has the same values in either naming.
    /// </summary>
    public static SafetensorsEntry Entry(string name, ulong seed, WeightDType dtype, long[] shape, params Part[] parts)
    {
        CheckDType(dtype);
        long count = shape.Aggregate(1L, (a, b) => a * b);
        if (parts.Sum(p => p.ElementCount) != count)
            throw new ArgumentException($"{name}: the parts hold {parts.Sum(p => p.ElementCount)} values, the shape {count}");
        return new SafetensorsEntry(name, dtype, shape, stream =>
        {
            foreach (var p in parts) Write(stream, seed, p, dtype);
        });
    }

    private static void CheckDType(WeightDType dtype)
    {
        if (dtype is not (WeightDType.F32 or WeightDType.F16))
            throw new UsageException($"random weights can be fp32 or fp16, not {dtype.Name()}");
    }

    // Generates a batch of chunks in parallel, then writes them in order: memory stays at a few chunks per core.
    private static void Write(Stream stream, ulong seed, Part p, WeightDType dtype)
    {
        long count = p.ElementCount;
        int size = dtype.SizeInBytes();
        int lanes = (int)Math.Min(Environment.ProcessorCount, (count + Chunk - 1) / Chunk);
        if (lanes <= 1)
        {
            var floats = ArrayPool<float>.Shared.Rent((int)Math.Min(count, Chunk));
            var bytes = ArrayPool<byte>.Shared.Rent((int)Math.Min(count, Chunk) * size);
            try
            {
                for (long start = 0; start < count; start += Chunk)
                {
                    int n = (int)Math.Min(Chunk, count - start);
                    Encode(seed, p, start, floats.AsSpan(0, n), bytes.AsSpan(0, n * size), dtype);
                    stream.Write(bytes, 0, n * size);
                }
            }
            finally
            {
                ArrayPool<float>.Shared.Return(floats);
                ArrayPool<byte>.Shared.Return(bytes);
            }
            return;
        }
        var f = new float[lanes][];
        var b = new byte[lanes][];
        for (int l = 0; l < lanes; l++)
        {
            f[l] = ArrayPool<float>.Shared.Rent(Chunk);
            b[l] = ArrayPool<byte>.Shared.Rent(Chunk * size);
        }
        try
        {
            for (long batch = 0; batch < count; batch += (long)lanes * Chunk)
            {
                long first = batch;
                Parallel.For(0, lanes, l =>
                {
                    long start = first + (long)l * Chunk;
                    if (start >= count) return;
                    int n = (int)Math.Min(Chunk, count - start);
                    Encode(seed, p, start, f[l].AsSpan(0, n), b[l].AsSpan(0, n * size), dtype);
                });
                for (int l = 0; l < lanes; l++)
                {
                    long start = first + (long)l * Chunk;
                    if (start >= count) break;
                    stream.Write(b[l], 0, (int)Math.Min(Chunk, count - start) * size);
                }
            }
        }
        finally
        {
            for (int l = 0; l < lanes; l++)
            {
                ArrayPool<float>.Shared.Return(f[l]);
                ArrayPool<byte>.Shared.Return(b[l]);
            }
        }
    }

    private static void Encode(ulong seed, Part p, long start, Span<float> values, Span<byte> dest, WeightDType dtype)
    {
        Fill(seed, p.Path, p.Kind, p.Shape, values, start);
        // Weight files are little-endian, as is every host sd runs on (WeightFile refuses others).
        if (dtype == WeightDType.F32)
        {
            MemoryMarshal.AsBytes(values).CopyTo(dest);
            return;
        }
        var halves = MemoryMarshal.Cast<byte, Half>(dest);
        for (int i = 0; i < values.Length; i++) halves[i] = (Half)values[i];
    }

    private static ulong SplitMix64(ref ulong x)
    {
        ulong z = x += Gamma;
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
