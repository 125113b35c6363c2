using System.Text.Json;

namespace StableDiffusion.Models;

/// <summary>
/// A model's config.json with typed, defaulted reads; a wrong type or value is a <see cref="ConfigException"/>
/// naming the file and key.
/// </summary>
public sealed class JsonConfig
{
    private readonly JsonElement root;

    public JsonConfig(JsonElement root, string source)
    {
        if (root.ValueKind != JsonValueKind.Object) throw new ConfigException($"{source}: not a JSON object");
        this.root = root.Clone();
        Source = source;
    }

    public string Source { get; }

    public static JsonConfig Load(string path)
    {
        if (!File.Exists(path)) throw new ConfigException($"{path}: config file not found");
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(path), new JsonDocumentOptions { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true });
            return new JsonConfig(doc.RootElement, path);
        }
        catch (JsonException e)
        {
            throw new ConfigException($"{path}: not valid JSON: {e.Message.Split('\n')[0]}");
        }
    }

    public static JsonConfig Parse(string json, string source = "<config>")
    {
        try
        {
            using var doc = JsonDocument.Parse(json);
            return new JsonConfig(doc.RootElement, source);
        }
        catch (JsonException e)
        {
            throw new ConfigException($"{source}: not valid JSON: {e.Message.Split('\n')[0]}");
        }
    }

    public bool Has(string key) => root.TryGetProperty(key, out var v) && v.ValueKind != JsonValueKind.Null;

    private JsonElement? Get(string key) =>
        root.TryGetProperty(key, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

    private ConfigException Bad(string key, string expected) =>
        new($"{Source}: \"{key}\" must be {expected}, found {root.GetProperty(key).GetRawText()}");

    public int Int(string key, int? fallback = null)
    {
        var v = Get(key);
        if (v is null) return fallback ?? throw new ConfigException($"{Source}: missing \"{key}\"");
        return v.Value.ValueKind == JsonValueKind.Number && v.Value.TryGetInt32(out var i) ? i : throw Bad(key, "an integer");
    }

    public float Float(string key, float? fallback = null)
    {
        var v = Get(key);
        if (v is null) return fallback ?? throw new ConfigException($"{Source}: missing \"{key}\"");
        return v.Value.ValueKind == JsonValueKind.Number ? (float)v.Value.GetDouble() : throw Bad(key, "a number");
    }

    /// <summary>A number at full precision (schedule constants such as beta_start 0.00085 are decimals, not floats).</summary>
    public double Double(string key, double? fallback = null)
    {
        var v = Get(key);
        if (v is null) return fallback ?? throw new ConfigException($"{Source}: missing \"{key}\"");
        return v.Value.ValueKind == JsonValueKind.Number ? v.Value.GetDouble() : throw Bad(key, "a number");
    }

    public bool Bool(string key, bool? fallback = null)
    {
        var v = Get(key);
        if (v is null) return fallback ?? throw new ConfigException($"{Source}: missing \"{key}\"");
        return v.Value.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw Bad(key, "true or false"),
        };
    }

    public string String(string key, string? fallback = null)
    {
        var v = Get(key);
        if (v is null) return fallback ?? throw new ConfigException($"{Source}: missing \"{key}\"");
        return v.Value.ValueKind == JsonValueKind.String ? v.Value.GetString()! : throw Bad(key, "a string");
    }

    public int[] IntArray(string key, int[]? fallback = null)
    {
        var v = Get(key);
        if (v is null) return fallback ?? throw new ConfigException($"{Source}: missing \"{key}\"");
        if (v.Value.ValueKind != JsonValueKind.Array) throw Bad(key, "an array of integers");
        return v.Value.EnumerateArray().Select(e => e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out var i) ? i : throw Bad(key, "an array of integers")).ToArray();
    }

    public string[] StringArray(string key, string[]? fallback = null)
    {
        var v = Get(key);
        if (v is null) return fallback ?? throw new ConfigException($"{Source}: missing \"{key}\"");
        if (v.Value.ValueKind != JsonValueKind.Array) throw Bad(key, "an array of strings");
        return v.Value.EnumerateArray().Select(e => e.ValueKind == JsonValueKind.String ? e.GetString()! : throw Bad(key, "an array of strings")).ToArray();
    }

    /// <summary>An integer or an array of integers (e.g. attention_head_dim: 8 or [5, 10, 20, 20]), as an array of <paramref name="count"/>.</summary>
    public int[] IntOrArray(string key, int count, int? fallback = null)
    {
        var v = Get(key);
        if (v is null)
            return fallback is int f ? Enumerable.Repeat(f, count).ToArray() : throw new ConfigException($"{Source}: missing \"{key}\"");
        if (v.Value.ValueKind == JsonValueKind.Number) return Enumerable.Repeat(Int(key), count).ToArray();
        var a = IntArray(key);
        if (a.Length != count) throw new ConfigException($"{Source}: \"{key}\" has {a.Length} entries, expected {count}");
        return a;
    }
}
