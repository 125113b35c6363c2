namespace StableDiffusion.Pipelines;

/// <summary>
/// Tiled VAE coding as diffusers' AutoencoderKL.tiled_decode / tiled_encode does it: the input is cut into
/// overlapping square tiles (a stride of ¾ of a tile), each tile is coded on its own, and every tile is blended
/// linearly into the one above and the one to its left across the overlap before the first stride of rows and
/// columns of each is kept. The peak is one tile's activations instead of the whole image's; group norms and the
/// mid-block attention then see one tile, so the result is close to, not equal to, the untiled one.
/// </summary>
public static class VaeTiling
{
    /// <summary>diffusers' defaults: 512-pixel tiles (64 latents for SD's factor 8), a quarter of each overlapping.</summary>
    public const int DefaultTilePixels = 512;
    public const float Overlap = 0.25f;

    /// <summary>
    /// Codes a channels-last [h, w, inC] input tile by tile. <paramref name="code"/> maps a [th, tw, inC] tile to
    /// [th·scale, tw·scale, outC] (scale = 8 for decode, ⅛ for encode, given as <paramref name="num"/>/<paramref name="den"/>).
    /// <paramref name="tile"/> is the input tile side, a multiple of <paramref name="den"/>.
    /// </summary>
    public static float[] Run(float[] input, int h, int w, int inC, int outC, int num, int den, int tile,
        Func<float[], int, int, float[]> code)
    {
        if (tile <= 0 || tile % den != 0) throw new ArgumentException($"tile {tile} must be a positive multiple of {den}");
        int stride = (int)(tile * (1 - Overlap)); // input units
        int tileOut = tile * num / den;
        int blend = (int)(tileOut * Overlap); // output units
        int keep = stride * num / den; // = tileOut − blend for the sizes used
        if (stride % den != 0) throw new ArgumentException($"tile {tile}: its stride {stride} must be a multiple of {den}");
        int outH = h * num / den, outW = w * num / den;
        var rows = new List<(float[] Data, int H, int W)[]>();
        for (int y = 0; y < h; y += stride)
        {
            var row = new List<(float[], int, int)>();
            for (int x = 0; x < w; x += stride)
            {
                int th = Math.Min(tile, h - y), tw = Math.Min(tile, w - x);
                var part = new float[(long)th * tw * inC];
                for (int r = 0; r < th; r++)
                    Array.Copy(input, ((long)(y + r) * w + x) * inC, part, (long)r * tw * inC, (long)tw * inC);
                int oh = th * num / den, ow = tw * num / den;
                var coded = code(part, th, tw);
                if (coded.Length != (long)oh * ow * outC)
                    throw new InvalidOperationException($"tile coder returned {coded.Length} values for a {oh}×{ow}×{outC} tile");
                row.Add((coded, oh, ow));
            }
            rows.Add([.. row]);
        }

        var output = new float[(long)outH * outW * outC];
        for (int i = 0; i < rows.Count; i++)
        for (int j = 0; j < rows[i].Length; j++)
        {
            var (t, th, tw) = rows[i][j];
            if (i > 0) BlendVertical(rows[i - 1][j], rows[i][j], blend, outC);
            if (j > 0) BlendHorizontal(rows[i][j - 1], rows[i][j], blend, outC);
            int oy = i * keep, ox = j * keep;
            int kh = Math.Min(keep, th), kw = Math.Min(keep, tw);
            if (i == rows.Count - 1) kh = Math.Min(th, outH - oy);
            if (j == rows[i].Length - 1) kw = Math.Min(tw, outW - ox);
            for (int r = 0; r < kh; r++)
                Array.Copy(t, (long)r * tw * outC, output, ((long)(oy + r) * outW + ox) * outC, (long)kw * outC);
        }
        return output;
    }

    /// <summary>b's first rows fade in from a's last rows: b[y] = a[H−e+y]·(1 − y/e) + b[y]·y/e.</summary>
    private static void BlendVertical((float[] Data, int H, int W) a, (float[] Data, int H, int W) b, int extent, int c)
    {
        int e = Math.Min(extent, Math.Min(a.H, b.H));
        for (int y = 0; y < e; y++)
        {
            float t = (float)y / e;
            long ar = (long)(a.H - e + y) * a.W * c, br = (long)y * b.W * c;
            for (int k = 0; k < b.W * c; k++) b.Data[br + k] = a.Data[ar + k] * (1 - t) + b.Data[br + k] * t;
        }
    }

    /// <summary>b's first columns fade in from a's last columns.</summary>
    private static void BlendHorizontal((float[] Data, int H, int W) a, (float[] Data, int H, int W) b, int extent, int c)
    {
        int e = Math.Min(extent, Math.Min(a.W, b.W));
        for (int y = 0; y < b.H; y++)
        for (int x = 0; x < e; x++)
        {
            float t = (float)x / e;
            long ai = ((long)y * a.W + a.W - e + x) * c, bi = ((long)y * b.W + x) * c;
            for (int k = 0; k < c; k++) b.Data[bi + k] = a.Data[ai + k] * (1 - t) + b.Data[bi + k] * t;
        }
    }

    /// <summary>
    /// Activation bytes an untiled SD-style VAE decode holds at its peak: measured 640 MiB at 512² in fp32 for SD's
    /// VAE, in the last up block's first resnet (its 2·w[1]-wide input and norm, plus w[0]-wide conv output per pixel).
    /// </summary>
    public static long DecodePeakBytes(int width, int height, int[] blockOut, int bytesPerElement) =>
        (long)width * height * (2L * blockOut[Math.Min(1, blockOut.Length - 1)] + blockOut[0]) * bytesPerElement;
}
