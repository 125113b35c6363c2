using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using StableDiffusion.Runtime;

namespace StableDiffusion.Kernels.Cpu;

/// <summary>
/// 3×3, stride 1, pad 1 convolution by Winograd's minimal filtering (Lavin and Gray, 2016): each m×m output tile
/// comes from its α×α input tile (α = m + 2) with α² multiply-adds per (tile, cin, cout) instead of 9m². F(4×4, 3×3)
/// (α² = 36 for 16 outputs: 4× fewer) serves large images, F(2×2, 3×3) (16 for 4: 2.25×) smaller ones, where the
/// weight's transform, α²·Cin·Cout floats made per call from the packed panels, would cost more than it saves.
/// The α² products are one batched GEMM, item ξ = [tiles, Cin] × [Cin, Cout], on the blocked GEMM's micro-kernel.
/// The transforms (points 0, ±1, ±2 and ∞) use small exact coefficients, so fp32 results differ from the direct sum by
/// rounding: measured against libtorch in the oracle tests.
/// </summary>
internal static unsafe class CpuWinograd
{
    /// <summary>
    /// N·H·W from which a convolution takes F(2×2, 3×3): a CFG batch of 16² latents. At 8² its 1280² weight transform
    /// costs about what it saves (the rotating probe of bench cpu gemm).
    /// </summary>
    internal static long MinPixels = Env("SD_CPU_WINOGRAD_MIN", 512);
    /// <summary>N·H·W from which F(4×4, 3×3) is used instead: a CFG batch of 32² latents.</summary>
    internal static long MinPixels4 = Env("SD_CPU_WINOGRAD4_MIN", 2048);
    /// <summary>Bytes of transformed weight at once: wider Cout is done in column blocks.</summary>
    internal static long WeightBlockBytes = 32L << 20;
    /// <summary>Bytes of transformed input plus products at once: more tiles are done in chunks.</summary>
    internal static long ChunkBytes = Env("SD_CPU_WINOGRAD_CHUNK_KB", 24L << 10) << 10;

    private static long Env(string name, long fallback) =>
        long.TryParse(Environment.GetEnvironmentVariable(name), out long v) && v > 0 ? v : fallback;

    /// <summary>Output tile edge for this convolution: 4, 2, or 0 where Winograd does not apply.</summary>
    public static int TileFor(in CpuConvArgs p)
    {
        if (!Eligible(p)) return 0;
        return (long)p.N * p.H * p.W >= MinPixels4 ? 4 : 2;
    }

    public static bool Eligible(in CpuConvArgs p) =>
        p.KH == 3 && p.KW == 3 && p.Stride == 1 && p.PadTop == 1 && p.PadLeft == 1 && p.PadBottom == 1 && p.PadRight == 1
        && p.XType == DType.F32 && p.YType == DType.F32 && (p.Residual == null || p.ResidualType == DType.F32)
        && p.Cin % 8 == 0 && p.Cout % 8 == 0 && (long)p.N * p.H * p.W >= MinPixels && Vector256.IsHardwareAccelerated;

    /// <summary>
    /// The convolution with output tiles of <paramref name="tile"/> (<see cref="TileFor"/>); block sizes 0 take the
    /// defaults (tests split small problems into several column blocks and tile chunks).
    /// </summary>
    public static void Run(in CpuConvArgs p, CpuPackedB w, int tile, long weightBlockBytes = 0, long chunkBytes = 0)
    {
        if (weightBlockBytes <= 0) weightBlockBytes = WeightBlockBytes;
        if (chunkBytes <= 0) chunkBytes = ChunkBytes;
        if (!Eligible(p)) throw new KernelArgumentException("cpu winograd: needs a 3x3 stride-1 pad-1 fp32 convolution with channels in multiples of 8");
        if (tile is not (2 or 4)) throw new KernelArgumentException($"cpu winograd: output tile {tile} is not 2 or 4");
        int nr = w.Nr, cin = p.Cin, cout = p.Cout, a2 = (tile + 2) * (tile + 2);
        long tiles = (long)p.N * ((p.H + tile - 1) / tile) * ((p.W + tile - 1) / tile);
        int padded = (cout + nr - 1) / nr * nr;
        int cols = (int)Math.Clamp(weightBlockBytes / (4L * a2 * cin) / nr * nr, nr, padded);
        int blocks = (cout + cols - 1) / cols;
        cols = Math.Min(((cout + blocks - 1) / blocks + nr - 1) / nr * nr, padded);
        long chunk = Math.Clamp(chunkBytes / (4L * a2 * (cin + cols)), Math.Min(96, tiles), tiles);
        int chunks = (int)((tiles + chunk - 1) / chunk);
        int perChunk = (int)((tiles + chunks - 1) / chunks);

        long uFloats = (long)a2 * cols * cin, vFloats = (long)a2 * perChunk * cin, mFloats = (long)a2 * perChunk * cols;
        var bias = new float[cout];
        var zeroRow = new float[cin];
        var buf = ScratchBuffer.Rent(uFloats + vFloats + mFloats);
        try
        {
            float* u = buf.Ptr, v = u + uFloats, m = v + vFloats;
            fixed (float* b = bias, zero = zeroRow)
            {
                if (p.Bias != null) Half16.Load(p.Bias, p.BiasType, b, cout);
                for (int c0 = 0; c0 < cout; c0 += cols)
                {
                    int n = Math.Min(cols, cout - c0);
                    TransformWeight(w, tile, cin, c0, n, u);
                    for (int ch = 0; ch < chunks; ch++)
                    {
                        long t0 = (long)ch * perChunk;
                        int count = (int)Math.Min(perChunk, tiles - t0);
                        if (c0 == 0 || chunks > 1) TransformInput(p, tile, zero, t0, count, v);
                        CpuGemm.RunPanels(v, u, m, a2, count, n, cin);
                        TransformOutput(p, tile, b, c0, n, t0, count, m);
                    }
                }
            }
            GC.KeepAlive(w);
        }
        finally
        {
            ScratchBuffer.Return(buf);
        }
    }

    /// <summary>
    /// U_ξ = G g Gᵀ for output columns [c0, c0+n), as α² items of whole-K panels (the GEMM's B layout, K = cin), read
    /// from the packed 3×3 weight whose column k = tap·cin + ci.
    /// </summary>
    private static void TransformWeight(CpuPackedB w, int tile, int cin, int c0, int n, float* u)
    {
        int nr = w.Nr, panels = (n + nr - 1) / nr, jp0 = c0 / nr, al = tile + 2;
        long tap = (long)cin * nr, item = (long)panels * nr * cin;
        bool half = w.DType == DType.F16;
        float* f = half ? null : w.Data;
        ushort* h = half ? w.HalfData : null;
        CpuChunks.For((long)panels * cin, 64, (a, e) =>
        {
            var g = stackalloc Vector256<float>[9];
            var rows = stackalloc Vector256<float>[3 * 6];
            var o = stackalloc Vector256<float>[6];
            for (long r = a; r < e; r++)
            {
                long q = r / cin, ci = r - q * cin;
                long src = ((jp0 + q) * 9 * cin + ci) * nr, dst = (q * cin + ci) * nr;
                for (int s = 0; s < nr; s += 8)
                {
                    for (int t = 0; t < 9; t++)
                        g[t] = half ? Half16.ToSingle(Vector128.Load(h + src + t * tap + s)) : Vector256.Load(f + src + t * tap + s);
                    // G over kh for each kw: rows[3i + kw] = (G g)[i][kw]
                    for (int kw = 0; kw < 3; kw++)
                    {
                        Filter(tile, g[kw], g[3 + kw], g[6 + kw], o);
                        for (int i = 0; i < al; i++) rows[3 * i + kw] = o[i];
                    }
                    // then Gᵀ over kw: U[i][j] is item α·i + j
                    for (int i = 0; i < al; i++)
                    {
                        Filter(tile, rows[3 * i], rows[3 * i + 1], rows[3 * i + 2], o);
                        float* d = u + (long)al * i * item + dst + s;
                        for (int j = 0; j < al; j++) o[j].Store(d + j * item);
                    }
                }
            }
        });
    }

    /// <summary>G·(g0, g1, g2): α = 4 rows (0, ±1, ∞) or α = 6 rows (0, ±1, ±2, ∞).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Filter(int tile, Vector256<float> g0, Vector256<float> g1, Vector256<float> g2, Vector256<float>* o)
    {
        var s = g0 + g2;
        if (tile == 2)
        {
            var h = Vector256.Create(0.5f);
            o[0] = g0;
            o[1] = (s + g1) * h;
            o[2] = (s - g1) * h;
            o[3] = g2;
            return;
        }
        var sixth = Vector256.Create(-1f / 6);
        var e = g0 * Vector256.Create(1f / 24) + g2 * Vector256.Create(1f / 6);
        var d = g1 * Vector256.Create(1f / 12);
        o[0] = g0 * Vector256.Create(0.25f);
        o[1] = (s + g1) * sixth;
        o[2] = (s - g1) * sixth;
        o[3] = e + d;
        o[4] = e - d;
        o[5] = g2;
    }

    /// <summary>Bᵀ·d over α points, reading d[k·stride] and writing o[k·outStride].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Data(int tile, Vector256<float>* d, int stride, Vector256<float>* o, int outStride)
    {
        if (tile == 2)
        {
            var d0 = d[0]; var d1 = d[stride]; var d2 = d[2 * stride]; var d3 = d[3 * stride];
            o[0] = d0 - d2;
            o[outStride] = d1 + d2;
            o[2 * outStride] = d2 - d1;
            o[3 * outStride] = d1 - d3;
            return;
        }
        var x0 = d[0]; var x1 = d[stride]; var x2 = d[2 * stride]; var x3 = d[3 * stride]; var x4 = d[4 * stride]; var x5 = d[5 * stride];
        var four = Vector256.Create(4f); var five = Vector256.Create(5f); var two = Vector256.Create(2f);
        var t0 = x4 - four * x2;
        var t1 = x3 - four * x1;
        var t2 = x4 - x2;
        var t3 = two * (x3 - x1);
        o[0] = four * x0 - five * x2 + x4;
        o[outStride] = t0 + t1;
        o[2 * outStride] = t0 - t1;
        o[3 * outStride] = t2 + t3;
        o[4 * outStride] = t2 - t3;
        o[5 * outStride] = four * x1 - five * x3 + x5;
    }

    /// <summary>Aᵀ·m: m outputs from α points, reading m[k·stride] and writing o[k·outStride].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Gather(int tile, Vector256<float>* m, int stride, Vector256<float>* o, int outStride)
    {
        if (tile == 2)
        {
            var m0 = m[0]; var m1 = m[stride]; var m2 = m[2 * stride]; var m3 = m[3 * stride];
            o[0] = m0 + m1 + m2;
            o[outStride] = m1 - m2 - m3;
            return;
        }
        var y1 = m[stride]; var y2 = m[2 * stride]; var y3 = m[3 * stride]; var y4 = m[4 * stride];
        var a = y1 + y2; var b = y1 - y2; var c = y3 + y4; var d = y3 - y4;
        o[0] = m[0] + a + c;
        o[outStride] = b + Vector256.Create(2f) * d;
        o[2 * outStride] = a + Vector256.Create(4f) * c;
        o[3 * outStride] = b + Vector256.Create(8f) * d + m[5 * stride];
    }

    /// <summary>Tile index (row-major over images, tile rows, tile columns) → its image and first output pixel.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static (int N, int Y, int X) Origin(long index, int tile, int tilesW, int tilesH)
    {
        long r = index / tilesW;
        return ((int)(r / tilesH), tile * (int)(r % tilesH), tile * (int)(index % tilesW));
    }

    /// <summary>V_ξ = Bᵀ d B of tiles [t0, t0+count) as α² items [count, cin]; outside the image reads zeros.</summary>
    private static void TransformInput(CpuConvArgs p, int tile, float* zero, long t0, int count, float* v)
    {
        int tilesW = (p.W + tile - 1) / tile, tilesH = (p.H + tile - 1) / tile, cin = p.Cin, hh = p.H, ww = p.W;
        int al = tile + 2, a2 = al * al;
        float* x = (float*)p.X;
        long item = (long)count * cin;
        CpuChunks.For(count, 32, (a, e) =>
        {
            var src = stackalloc float*[36];
            var d = stackalloc Vector256<float>[36];
            var c1 = stackalloc Vector256<float>[36];
            for (long t = a; t < e; t++)
            {
                var (n, oy, ox) = Origin(t0 + t, tile, tilesW, tilesH);
                for (int i = 0; i < al; i++)
                    for (int j = 0; j < al; j++)
                    {
                        int yy = oy - 1 + i, xx = ox - 1 + j;
                        src[al * i + j] = (uint)yy < (uint)hh && (uint)xx < (uint)ww ? x + (((long)n * hh + yy) * ww + xx) * cin : zero;
                    }
                float* dst = v + t * cin;
                for (int c = 0; c < cin; c += 8)
                {
                    for (int k = 0; k < a2; k++) d[k] = Vector256.Load(src[k] + c);
                    // Bᵀ over rows, column by column, then B over columns: item α·i + j
                    for (int j = 0; j < al; j++) Data(tile, d + j, al, c1 + j, al);
                    for (int i = 0; i < al; i++) Data(tile, c1 + al * i, 1, d + al * i, 1);
                    for (int k = 0; k < a2; k++) d[k].Store(dst + k * item + c);
                }
            }
        });
    }

    /// <summary>
    /// Y = Aᵀ M A for tiles [t0, t0+count) and output columns [c0, c0+n) from the products m (α² items [count, n]),
    /// plus bias and residual; outputs of edge tiles past the image are dropped.
    /// </summary>
    private static void TransformOutput(CpuConvArgs p, int tile, float* bias, int c0, int n, long t0, int count, float* m)
    {
        int tilesW = (p.W + tile - 1) / tile, tilesH = (p.H + tile - 1) / tile, hh = p.H, ww = p.W, cout = p.Cout;
        int al = tile + 2, a2 = al * al, o2 = tile * tile;
        float* y = (float*)p.Y, res = (float*)p.Residual;
        long item = (long)count * n;
        CpuChunks.For(count, 32, (a, e) =>
        {
            var mv = stackalloc Vector256<float>[36];
            var rows = stackalloc Vector256<float>[4 * 6];
            var outv = stackalloc Vector256<float>[16];
            var dst = stackalloc long[16];
            for (long t = a; t < e; t++)
            {
                var (nn, oy, ox) = Origin(t0 + t, tile, tilesW, tilesH);
                for (int i = 0; i < tile; i++)
                    for (int j = 0; j < tile; j++)
                    {
                        int yy = oy + i, xx = ox + j;
                        dst[tile * i + j] = yy < hh && xx < ww ? (((long)nn * hh + yy) * ww + xx) * cout + c0 : -1;
                    }
                float* src = m + t * n;
                for (int c = 0; c < n; c += 8)
                {
                    for (int k = 0; k < a2; k++) mv[k] = Vector256.Load(src + k * item + c);
                    // Aᵀ over rows, column by column (rows[α·i + j]), then A over columns
                    for (int j = 0; j < al; j++) Gather(tile, mv + j, al, rows + j, al);
                    for (int i = 0; i < tile; i++) Gather(tile, rows + al * i, 1, outv + tile * i, 1);
                    var b = Vector256.Load(bias + c0 + c);
                    for (int k = 0; k < o2; k++)
                    {
                        long o = dst[k];
                        if (o < 0) continue;
                        var val = outv[k] + b;
                        if (res != null) val += Vector256.Load(res + o + c);
                        val.Store(y + o + c);
                    }
                }
            }
        });
    }
}
