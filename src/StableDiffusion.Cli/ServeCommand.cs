using System.Globalization;
using StableDiffusion.Runtime;
using StableDiffusion.Server;

namespace StableDiffusion.Cli;

/// <summary>
/// <c>sd serve</c>: loads the model once and answers A1111's and OpenAI's image APIs, jobs with streamed progress and a
/// web page until SIGTERM or Ctrl+C (the running job stops after its step; waiting ones are cancelled).
/// </summary>
internal static class ServeCommand
{
    public static int Run(Args a, TextWriter stdout, TextWriter stderr)
    {
        var options = Parse(a, stderr);
        var log = TextWriter.Synchronized(stderr);
        var app = ServerApp.Create(options, log);
        app.Lifetime.ApplicationStarted.Register(() =>
        {
            foreach (var url in ServerApp.Addresses(app)) stdout.WriteLine($"sd serve: listening on {url}");
        });
        app.Run();
        return 0;
    }

    internal static ServerOptions Parse(Args a, TextWriter stderr)
    {
        var model = a.Value("--model") ?? throw new UsageException("'sd serve' needs --model (a diffusers folder, a .safetensors/.ckpt file or a hub id org/name)");
        var listen = a.Value("--listen") ?? "127.0.0.1:7860";
        var device = a.Value("--device") ?? "auto";
        DeviceRequest.Parse(device);
        DType? precision = a.Value("--precision") switch
        {
            null => null,
            "fp16" => DType.F16,
            "fp32" => DType.F32,
            var p => throw new UsageException($"--precision '{p}': use fp16 or fp32"),
        };
        int maxQueue = 16;
        if (a.Value("--max-queue") is string q && (!int.TryParse(q, NumberStyles.None, CultureInfo.InvariantCulture, out maxQueue) || maxQueue > 10_000))
            throw new UsageException($"--max-queue '{q}': must be an integer from 0 to 10000");
        var options = new ServerOptions
        {
            Model = model, Listen = listen, Device = device, Precision = precision,
            ModelsDir = a.Value("--models-dir"), LoraDir = a.Value("--lora-dir"), EmbeddingsDir = a.Value("--embeddings-dir"),
            Tokenizer = a.Value("--tokenizer"), MaxQueue = maxQueue,
            ApiKey = a.Value("--api-key") ?? Environment.GetEnvironmentVariable("SD_API_KEY"), ApiAuth = a.Value("--api-auth"),
            CorsOrigin = a.Value("--cors-origin"),
        };
        a.CheckDone();
        options.Validate(); // before a hub download or a model load
        return options with { Model = ModelArgument.Resolve(model, revision: null, variant: null, stderr) };
    }
}
