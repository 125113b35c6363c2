using StableDiffusion.IO;
using StableDiffusion.TestSupport;

namespace StableDiffusion.Pipelines.Tests.Support;

/// <summary>
/// The tiny models, each written once for all the end-to-end tests and on first use, so that tests needing
/// ../shared/reference (for the tokenizer) skip before anything is written.
/// </summary>
public sealed class TinyModels : IDisposable
{
    private readonly Dictionary<string, TinyModel> models = [];
    private readonly Dictionary<string, (ModelSource Source, StableDiffusionPipeline Pipeline)> pipelines = [];

    private TinyModel Get(string key, Func<TinyModel> write)
    {
        SharedReference.Require("configs", "sd15", "tokenizer");
        lock (models)
        {
            if (!models.TryGetValue(key, out var m)) models[key] = m = write();
            return m;
        }
    }

    public TinyModel Base => Get("base", () => TinyModel.Write());
    public TinyModel ZeroUnetOutput => Get("zero-unet", () => TinyModel.Write(zeroUnetOutput: true));
    public TinyModel Inpainting => Get("inpaint", () => TinyModel.Write(inpainting: true));
    public TinyModel Fp16VaeOverflow => Get("vae-overflow", () => TinyModel.Write(vaeOverflowsInFp16: true));

    /// <summary>
    /// An fp32 pipeline on the shared test device, kept loaded across tests (models load once); backend "test" is the
    /// ILGPU kernels on the CPU accelerator, "cpu" the C# CPU backend.
    /// </summary>
    public StableDiffusionPipeline Pipeline(TinyModel model, PipelineOptions? options = null, string backend = "test")
    {
        var key = model.Path + "|" + (options?.ToString() ?? "") + "|" + backend;
        lock (pipelines)
        {
            if (pipelines.TryGetValue(key, out var p)) return p.Pipeline;
            var source = ModelSource.Open(model.Path);
            var pipeline = StableDiffusionPipeline.Open(source, TestSupport.Devices.Backend(backend), options ?? new PipelineOptions());
            pipelines[key] = (source, pipeline);
            return pipeline;
        }
    }

    public void Dispose()
    {
        foreach (var (source, pipeline) in pipelines.Values)
        {
            pipeline.Dispose();
            source.Dispose();
        }
        foreach (var m in models.Values) m.Dispose();
    }
}

[CollectionDefinition(Name)]
public sealed class TinyModelCollection : ICollectionFixture<TinyModels>
{
    public const string Name = "tiny models";
}
