using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;

namespace StableDiffusion.Server;

/// <summary>The page at / (plain HTML, CSS and JavaScript, embedded in the assembly: nothing to build).</summary>
public static class WebPage
{
    private static readonly Dictionary<string, (string Resource, string Type)> Assets = new(StringComparer.Ordinal)
    {
        ["/"] = ("wwwroot/index.html", "text/html; charset=utf-8"),
        ["/app.js"] = ("wwwroot/app.js", "text/javascript; charset=utf-8"),
        ["/style.css"] = ("wwwroot/style.css", "text/css; charset=utf-8"),
    };

    private static readonly Dictionary<string, byte[]> Cache = Assets.ToDictionary(a => a.Key, a => Load(a.Value.Resource));

    public static bool IsPageAsset(PathString path) => Assets.ContainsKey(path.Value ?? "");

    public static void Map(WebApplication app)
    {
        foreach (var (path, (_, type)) in Assets)
            app.MapGet(path, () => Results.Bytes(Cache[path], type));
    }

    private static byte[] Load(string resource)
    {
        using var stream = typeof(WebPage).Assembly.GetManifestResourceStream(resource)
            ?? throw new InvalidOperationException($"embedded resource {resource} is missing");
        using var copy = new MemoryStream();
        stream.CopyTo(copy);
        return copy.ToArray();
    }
}
