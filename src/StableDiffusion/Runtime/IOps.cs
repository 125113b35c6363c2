namespace StableDiffusion.Runtime;

public enum Activation
{
    Silu = 0,
    /// <summary>Exact GELU: x * Phi(x) with erf.</summary>
    Gelu = 1,
    /// <summary>The tanh approximation of GELU.</summary>
    GeluTanh = 2,
    /// <summary>CLIP's x * sigmoid(1.702 x).</summary>
    QuickGelu = 3,
    /// <summary>e^x (the VAE's standard deviation from its log-variance).</summary>
    Exp = 4,
    /// <summary>max(x, 0) (the tiny autoencoder's activation).</summary>
    Relu = 5,
    /// <summary>tanh(x) (the tiny autoencoder's latent clamp, 3·tanh(x/3)).</summary>
    Tanh = 6,
}

public enum BinaryOp
{
    Add = 0,
    Mul = 1,
}

/// <summary>
/// The operations models are written against (DESIGN.md §1). A backend implements them on its device; models never
/// see kernels. Every op returns a new tensor from the device's pool, in the dtype of its inputs, and validates its
/// arguments before touching the device. Activations are channels-last: images [N, H, W, C], tokens [B, L, C].
/// </summary>
public interface IOps
{
    ComputeDevice Device { get; }

    /// <summary>The backend's packer of linear and convolution weights, if it keeps them in a layout of its own.</summary>
    IWeightPacker? WeightPacker => null;

    /// <summary>
    /// alpha * op(a) op(b) + bias + residual. a: [M, K] (or [K, M] with transA), b: [K, N] (or [N, K] with transB),
    /// each optionally with one leading batch dimension; a 2-D operand is broadcast over the other's batch.
    /// bias: [N]; residual: the output's shape.
    /// </summary>
    Tensor MatMul(Tensor a, Tensor b, bool transA = false, bool transB = false, float alpha = 1f,
        Tensor? bias = null, Tensor? residual = null);

    /// <summary>x [..., in] times weight [out, in] transposed, plus bias [out] and residual [..., out].</summary>
    Tensor Linear(Tensor x, Tensor weight, Tensor? bias = null, Tensor? residual = null);

    /// <summary>x [N, H, W, Cin], weight [Cout, KH, KW, Cin] (OHWI), bias [Cout], residual [N, Hout, Wout, Cout].</summary>
    Tensor Conv2d(Tensor x, Tensor weight, Tensor? bias = null, int stride = 1, int padding = 0, Tensor? residual = null);

    /// <summary>Conv2d with different zero padding per side (the VAE encoder pads only bottom and right).</summary>
    Tensor Conv2d(Tensor x, Tensor weight, Tensor? bias, int stride, int padTop, int padLeft, int padBottom, int padRight,
        Tensor? residual = null);

    /// <summary>Group norm of x [N, ..., C] with weight/bias [C] (or none), optionally followed by SiLU.</summary>
    Tensor GroupNorm(Tensor x, int groups, Tensor? weight, Tensor? bias, float eps, bool silu = false);

    /// <summary>Layer norm over the last dimension.</summary>
    Tensor LayerNorm(Tensor x, Tensor? weight, Tensor? bias, float eps);

    /// <summary>softmax(scale * x) over the last dimension.</summary>
    Tensor Softmax(Tensor x, float scale = 1f);

    /// <summary>
    /// Multi-head attention softmax(q kᵀ * scale) v without materialising the scores. q [B, Lq, H*D],
    /// k and v [B, Lk, H*D]; scale defaults to 1/sqrt(D); causal masks key j &gt; query i.
    /// </summary>
    Tensor Attention(Tensor q, Tensor k, Tensor v, int heads, float? scale = null, bool causal = false);

    Tensor Activate(Tensor x, Activation kind);

    /// <summary>x [..., 2C] → [..., C]: x[..., :C] * gelu(x[..., C:]).</summary>
    Tensor Geglu(Tensor x, bool approximate = false);

    /// <summary>a op b with b broadcast to a's shape (right-aligned, dimensions equal or 1).</summary>
    Tensor Binary(BinaryOp op, Tensor a, Tensor b);

    Tensor Add(Tensor a, Tensor b) => Binary(BinaryOp.Add, a, b);

    Tensor Mul(Tensor a, Tensor b) => Binary(BinaryOp.Mul, a, b);

    /// <summary>x * alpha + beta.</summary>
    Tensor Scale(Tensor x, float alpha, float beta = 0f);

    /// <summary>min(max(x, lo), hi).</summary>
    Tensor Clamp(Tensor x, float lo, float hi);

    /// <summary>Nearest-neighbour 2x upsampling of x [N, H, W, C].</summary>
    Tensor Upsample2x(Tensor x);

    /// <summary>Concatenation along the last (channel) dimension.</summary>
    Tensor Concat(Tensor a, Tensor b);

    /// <summary>x[..., start:start+length] along the last dimension.</summary>
    Tensor SliceLast(Tensor x, int start, int length);

    /// <summary>Sinusoidal embedding of fp32 timesteps [N] → [N, dim] in <paramref name="dtype"/>.</summary>
    Tensor TimestepEmbedding(Tensor timesteps, int dim, DType dtype, bool flipSinToCos = true,
        float downscaleFreqShift = 0f, float maxPeriod = 10000f);

    /// <summary>Rows of table [V, C] picked by int32 ids [...] → [..., C].</summary>
    Tensor Embedding(Tensor table, Tensor ids);

    /// <summary>[..., R, C] → [..., C, R].</summary>
    Tensor Transpose(Tensor x);

    Tensor Cast(Tensor x, DType dtype);
}

/// <summary>
/// A backend that keeps the constant operand of its linear layers and convolutions packed in its own layout (the CPU
/// backend: its GEMM's panels), made once while a model loads, straight from the checkpoint's bytes, rather than as a
/// second copy on first use. Such weights may stay fp16 under fp32 compute: the backend widens them as it multiplies.
/// The packed tensors it returns (<see cref="Tensor.IsPacked"/>) are read only by its own Linear and Conv2d.
/// </summary>
public interface IWeightPacker
{
    /// <summary>
    /// Packs a weight from host bytes in <paramref name="srcType"/> into <paramref name="dtype"/>. <paramref name="shape"/>
    /// is the device shape, [out, in] or OHWI [out, kh, kw, cin]; the bytes are PyTorch's OIHW [out, cin, kh, kw] when
    /// <paramref name="oihw"/>, else row-major in the device shape.
    /// </summary>
    Tensor Pack(ReadOnlySpan<byte> src, DType srcType, int[] shape, bool oihw, DType dtype);

    /// <summary>Packs a row-major device weight ([out, in] or OHWI) in <paramref name="dtype"/>; the tensor is left as it is.</summary>
    Tensor Pack(Tensor weight, DType dtype);
}
