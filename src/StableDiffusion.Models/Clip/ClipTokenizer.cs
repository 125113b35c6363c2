using System.IO.Compression;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;

namespace StableDiffusion.Models.Clip;

/// <summary>
/// A prompt as the text encoder takes it: <see cref="ClipTokenizer.MaxLength"/> ids (start, text, end, padding),
/// how many of them are real tokens, and what truncation dropped.
/// </summary>
public sealed record ClipTokens(int[] Ids, int Length, bool Truncated, string DroppedText);

/// <summary>
/// CLIP's byte-level BPE tokenizer (openai/CLIP simple_tokenizer, transformers' CLIPTokenizer) on
/// Microsoft.ML.Tokenizers: clean-up (NFC, whitespace collapsed, trimmed, lower case), CLIP's pre-tokenizer regex,
/// byte-level BPE with the "&lt;/w&gt;" end-of-word suffix, then start and end tokens, truncation and padding to 77.
/// The pad token differs by model: SD1.x pads with &lt;|endoftext|&gt; (49407), SD2.x with "!" (0).
/// </summary>
public sealed partial class ClipTokenizer
{
    public const int DefaultMaxLength = 77;
    public const string StartToken = "<|startoftext|>";
    public const string EndToken = "<|endoftext|>";

    // openai/CLIP simple_tokenizer.py; the special tokens come first so a prompt that spells them keeps them whole.
    private const string Pattern = @"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

    // The BPE file CLIP ships holds more merge lines than the model uses: its vocabulary is 49408 tokens,
    // 512 byte tokens (with and without "</w>"), 48894 merges and the two special tokens.
    private const int MergeCount = 49152 - 256 - 2;

    private readonly BpeTokenizer bpe;
    private readonly Dictionary<int, string> tokens;
    private readonly IReadOnlyList<string> merges;

    private ClipTokenizer(Dictionary<string, int> vocab, IReadOnlyList<string> merges, string padToken, string source, int maxLength)
    {
        if (maxLength < 2) throw new ConfigException($"{source}: a tokenizer needs room for at least the start and end tokens (max length {maxLength})");
        Source = source;
        MaxLength = maxLength;
        StartId = Id(vocab, StartToken, source);
        EndId = Id(vocab, EndToken, source);
        PadToken = padToken;
        PadId = Id(vocab, padToken, source);
        tokens = vocab.ToDictionary(kv => kv.Value, kv => kv.Key);
        this.merges = merges;
        var special = new Dictionary<string, int> { [StartToken] = StartId, [EndToken] = EndId };
        bpe = BpeTokenizer.Create(new BpeOptions(vocab)
        {
            Merges = merges,
            SpecialTokens = special,
            ByteLevel = true, // without it non-ASCII text comes out wrong (TOOLCHAIN.md)
            EndOfWordSuffix = "</w>",
            PreTokenizer = new RegexPreTokenizer(new Regex(Pattern, RegexOptions.IgnoreCase | RegexOptions.CultureInvariant | RegexOptions.Compiled), special),
            Normalizer = new ClipCleanup(),
        });
    }

    /// <summary>Where the vocabulary and configuration came from, for messages.</summary>
    public string Source { get; }

    public int MaxLength { get; }
    public int StartId { get; }
    public int EndId { get; }
    public string PadToken { get; }
    public int PadId { get; }

    /// <summary>
    /// Reads a diffusers <c>tokenizer/</c> folder: the pad token from special_tokens_map.json, else
    /// tokenizer_config.json, else &lt;|endoftext|&gt;; the vocabulary from <paramref name="vocabulary"/> (another such
    /// folder or CLIP's bpe_simple_vocab_16e6.txt.gz) when given, else the folder's vocab.json and merges.txt, else
    /// (a folder with neither, as some copies of SD2's carry only the json files) the built-in CLIP vocabulary.
    /// </summary>
    public static ClipTokenizer FromFolder(string folder, string? vocabulary = null, int maxLength = DefaultMaxLength)
    {
        if (!Directory.Exists(folder)) throw new ConfigException($"{folder}: tokenizer folder not found");
        var pad = ReadPadToken(folder);
        bool hasVocab = File.Exists(Path.Combine(folder, "vocab.json")), hasMerges = File.Exists(Path.Combine(folder, "merges.txt"));
        if (vocabulary is null && !hasVocab && !hasMerges)
        {
            var (v, m) = BuiltInVocabulary.Value;
            return new ClipTokenizer(v, m, pad, $"{folder} ({BuiltInSource})", maxLength);
        }
        var source = vocabulary ?? folder;
        var (vocab, merges) = ReadVocabulary(source, folder);
        return new ClipTokenizer(vocab, merges, pad, folder, maxLength);
    }

    /// <summary>
    /// CLIP's vocabulary as sd ships it (bpe_simple_vocab_16e6.txt.gz, embedded): SD1's tokenizer with
    /// &lt;|endoftext|&gt; padding, OpenCLIP's (SD2, SDXL's second tokenizer) with "!" (<see cref="OpenClipPadToken"/>).
    /// </summary>
    public static ClipTokenizer BuiltIn(string padToken = EndToken, int maxLength = DefaultMaxLength)
    {
        var (vocab, merges) = BuiltInVocabulary.Value;
        return new ClipTokenizer(vocab, merges, padToken, BuiltInSource, maxLength);
    }

    /// <summary>The pad token of OpenCLIP's tokenizer (SD2.x, SDXL's tokenizer_2): "!", id 0.</summary>
    public const string OpenClipPadToken = "!";

    public const string BuiltInSource = "built-in CLIP vocabulary";

    private static readonly Lazy<(Dictionary<string, int>, List<string>)> BuiltInVocabulary = new(() =>
    {
        using var resource = typeof(ClipTokenizer).Assembly.GetManifestResourceStream("clip/bpe_simple_vocab_16e6.txt.gz")
            ?? throw new ConfigException("the built-in CLIP vocabulary is missing from StableDiffusion.Models (a broken build)");
        return ReadBpe(resource, BuiltInSource);
    });

    /// <summary>
    /// Writes this tokenizer's vocabulary as a diffusers folder holds it: vocab.json (token → id) and merges.txt.
    /// </summary>
    public void WriteVocabulary(string folder)
    {
        Directory.CreateDirectory(folder);
        using (var stream = File.Create(Path.Combine(folder, "vocab.json")))
        using (var json = new Utf8JsonWriter(stream))
        {
            json.WriteStartObject();
            foreach (var (id, token) in tokens.OrderBy(kv => kv.Key)) json.WriteNumber(token, id);
            json.WriteEndObject();
        }
        File.WriteAllText(Path.Combine(folder, "merges.txt"), "#version: 0.2\n" + string.Join("\n", merges) + "\n", new UTF8Encoding(false));
    }

    /// <summary>CLIP's own BPE file (bpe_simple_vocab_16e6.txt.gz), the vocabulary of both SD1.x and SD2.x.</summary>
    public static ClipTokenizer FromBpeFile(string path, string padToken = EndToken, int maxLength = DefaultMaxLength)
    {
        var (vocab, merges) = ReadBpeFile(path);
        return new ClipTokenizer(vocab, merges, padToken, path, maxLength);
    }

    /// <summary>The ids of <paramref name="text"/> with start and end tokens, neither truncated nor padded.</summary>
    public int[] Encode(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var body = bpe.EncodeToIds(text);
        var ids = new int[body.Count + 2];
        ids[0] = StartId;
        for (int i = 0; i < body.Count; i++) ids[i + 1] = body[i];
        ids[^1] = EndId;
        return ids;
    }

    /// <summary>
    /// <see cref="MaxLength"/> ids for the text encoder: start, at most MaxLength − 2 text tokens, end, then pad tokens.
    /// A longer prompt loses its tail (as in diffusers); <paramref name="warn"/> hears about it, and the result says so.
    /// </summary>
    public ClipTokens Tokenize(string text, Action<string>? warn = null)
    {
        var all = Encode(text);
        int body = all.Length - 2, keep = Math.Min(body, MaxLength - 2);
        var ids = new int[MaxLength];
        Array.Fill(ids, PadId);
        ids[0] = StartId;
        Array.Copy(all, 1, ids, 1, keep);
        ids[keep + 1] = EndId;
        if (keep == body) return new ClipTokens(ids, keep + 2, false, "");
        var dropped = Decode(all.AsSpan(1 + keep, body - keep));
        warn?.Invoke($"the prompt is longer than CLIP's {MaxLength} tokens; this part was dropped: \"{dropped}\"");
        return new ClipTokens(ids, MaxLength, true, dropped);
    }

    /// <summary>Text of BPE ids (special tokens spelled out), words separated by spaces as CLIP decodes them.</summary>
    public string Decode(ReadOnlySpan<int> ids)
    {
        var bytes = new List<byte>();
        foreach (var id in ids)
        {
            if (!tokens.TryGetValue(id, out var token)) throw new ConfigException($"{Source}: id {id} is not in the vocabulary");
            if (id == StartId || id == EndId)
            {
                bytes.AddRange(Encoding.UTF8.GetBytes(token));
                continue;
            }
            bool endOfWord = token.EndsWith("</w>", StringComparison.Ordinal);
            foreach (var c in endOfWord ? token[..^4] : token) bytes.Add(ByteLevel.Decoder[c]);
            if (endOfWord) bytes.Add((byte)' ');
        }
        return Encoding.UTF8.GetString(bytes.ToArray()).TrimEnd();
    }

    private static int Id(Dictionary<string, int> vocab, string token, string source) =>
        vocab.TryGetValue(token, out var id) ? id : throw new ConfigException($"{source}: token \"{token}\" is not in the vocabulary");

    // ---- files ----

    /// <summary>special_tokens_map.json takes precedence over tokenizer_config.json, as in transformers.</summary>
    private static string ReadPadToken(string folder)
    {
        foreach (var file in new[] { "special_tokens_map.json", "tokenizer_config.json" })
        {
            var path = Path.Combine(folder, file);
            if (!File.Exists(path)) continue;
            using var doc = ParseJson(path);
            if (doc.RootElement.ValueKind != JsonValueKind.Object) throw new ConfigException($"{path}: not a JSON object");
            if (!doc.RootElement.TryGetProperty("pad_token", out var pad) || pad.ValueKind == JsonValueKind.Null) continue;
            // A plain string, or an AddedToken object {"content": ...}.
            if (pad.ValueKind == JsonValueKind.String) return pad.GetString()!;
            if (pad.ValueKind == JsonValueKind.Object && pad.TryGetProperty("content", out var c) && c.ValueKind == JsonValueKind.String)
                return c.GetString()!;
            throw new ConfigException($"{path}: \"pad_token\" must be a string or an object with \"content\", found {pad.GetRawText()}");
        }
        return EndToken;
    }

    private static (Dictionary<string, int>, List<string>) ReadVocabulary(string source, string folder)
    {
        if (File.Exists(source)) return ReadBpeFile(source);
        if (!Directory.Exists(source)) throw new ConfigException($"{source}: vocabulary not found (expected a folder with vocab.json and merges.txt, or bpe_simple_vocab_16e6.txt.gz)");
        var vocabPath = Path.Combine(source, "vocab.json");
        var mergesPath = Path.Combine(source, "merges.txt");
        foreach (var p in new[] { vocabPath, mergesPath })
            if (!File.Exists(p))
                throw new ConfigException(source == folder
                    ? $"{folder}: tokenizer folder has no {Path.GetFileName(p)} beside its {(p == vocabPath ? "merges.txt" : "vocab.json")} (give both, or neither for the built-in CLIP vocabulary)"
                    : $"{source}: vocabulary folder has no {Path.GetFileName(p)}");
        Dictionary<string, int> vocab;
        using (var doc = ParseJson(vocabPath))
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object) throw new ConfigException($"{vocabPath}: not a JSON object of token ids");
            vocab = new Dictionary<string, int>(StringComparer.Ordinal);
            foreach (var p in doc.RootElement.EnumerateObject())
            {
                if (p.Value.ValueKind != JsonValueKind.Number || !p.Value.TryGetInt32(out var id) || id < 0)
                    throw new ConfigException($"{vocabPath}: token \"{p.Name}\" has id {p.Value.GetRawText()}, not a non-negative integer");
                vocab[p.Name] = id;
            }
        }
        var merges = new List<string>();
        foreach (var line in File.ReadLines(mergesPath))
        {
            if (line.StartsWith("#version", StringComparison.Ordinal) || line.Length == 0) continue;
            if (line.Split(' ').Length != 2) throw new ConfigException($"{mergesPath}: line \"{line}\" is not a merge of two tokens");
            merges.Add(line);
        }
        return (vocab, merges);
    }

    /// <summary>
    /// openai/CLIP's vocabulary from its BPE file: the 256 byte tokens, the same with "&lt;/w&gt;", one token per merge
    /// (first 48894 merge lines), then &lt;|startoftext|&gt; and &lt;|endoftext|&gt;, numbered in that order.
    /// </summary>
    private static (Dictionary<string, int>, List<string>) ReadBpeFile(string path)
    {
        if (!File.Exists(path)) throw new ConfigException($"{path}: BPE vocabulary file not found");
        using var file = File.OpenRead(path);
        if (!path.EndsWith(".gz", StringComparison.OrdinalIgnoreCase))
        {
            using var reader = new StreamReader(file, Encoding.UTF8);
            return ReadBpeLines(reader.ReadToEnd().Split('\n'), path);
        }
        return ReadBpe(file, path);
    }

    private static (Dictionary<string, int>, List<string>) ReadBpe(Stream gzip, string path)
    {
        string[] lines;
        try
        {
            using var stream = new GZipStream(gzip, CompressionMode.Decompress);
            using var reader = new StreamReader(stream, Encoding.UTF8);
            lines = reader.ReadToEnd().Split('\n');
        }
        catch (InvalidDataException e)
        {
            throw new ConfigException($"{path}: not a gzip file: {e.Message}");
        }
        return ReadBpeLines(lines, path);
    }

    private static (Dictionary<string, int>, List<string>) ReadBpeLines(string[] lines, string path)
    {
        if (lines.Length < MergeCount + 1) throw new ConfigException($"{path}: {lines.Length - 1} merge lines, CLIP's vocabulary needs {MergeCount}");
        var merges = lines.Skip(1).Take(MergeCount).ToList();
        var ordered = new List<string>(MergeCount + 514);
        ordered.AddRange(ByteLevel.Encoder);
        ordered.AddRange(ByteLevel.Encoder.Select(t => t + "</w>"));
        foreach (var m in merges)
        {
            var parts = m.Split(' ');
            if (parts.Length != 2) throw new ConfigException($"{path}: line \"{m}\" is not a merge of two tokens");
            ordered.Add(parts[0] + parts[1]);
        }
        ordered.Add(StartToken);
        ordered.Add(EndToken);
        var vocab = new Dictionary<string, int>(ordered.Count, StringComparer.Ordinal);
        for (int i = 0; i < ordered.Count; i++)
            if (!vocab.TryAdd(ordered[i], i)) throw new ConfigException($"{path}: token \"{ordered[i]}\" appears twice");
        return (vocab, merges);
    }

    private static JsonDocument ParseJson(string path)
    {
        try
        {
            return JsonDocument.Parse(File.ReadAllBytes(path), new JsonDocumentOptions { AllowTrailingCommas = true });
        }
        catch (JsonException e)
        {
            throw new ConfigException($"{path}: not valid JSON: {e.Message.Split('\n')[0]}");
        }
    }

    /// <summary>
    /// CLIP's clean-up: Unicode NFC, runs of whitespace to one space, trimmed, lower case. NFC needs ICU: under
    /// invariant globalization (how sd is built) .NET leaves non-ASCII text as it is, so text typed in decomposed form
    /// (a letter followed by a combining accent, rare from keyboards) keeps the accent as a separate token.
    /// </summary>
    private sealed partial class ClipCleanup : Normalizer
    {
        public override string Normalize(string original) =>
            Whitespace().Replace(original.Normalize(NormalizationForm.FormC), " ").Trim().ToLowerInvariant();

        public override string Normalize(ReadOnlySpan<char> original) => Normalize(original.ToString());

        [GeneratedRegex(@"\s+")]
        private static partial Regex Whitespace();
    }

    /// <summary>GPT-2's bytes_to_unicode: each byte as a printable character, printable ASCII and Latin-1 as themselves.</summary>
    private static class ByteLevel
    {
        // In CLIP's vocabulary order: the printable bytes first, in byte order, then the others as 256 + n.
        private static readonly (byte Byte, char Char)[] Pairs = Build();

        /// <summary>The byte tokens in vocabulary order.</summary>
        public static readonly string[] Encoder = Pairs.Select(p => p.Char.ToString()).ToArray();

        public static readonly Dictionary<char, byte> Decoder = Pairs.ToDictionary(p => p.Char, p => p.Byte);

        private static (byte, char)[] Build()
        {
            static bool Printable(int b) => b is >= '!' and <= '~' or >= '¡' and <= '¬' or >= '®' and <= 'ÿ';
            var pairs = Enumerable.Range(0, 256).Where(Printable).Select(b => ((byte)b, (char)b)).ToList();
            int n = 0;
            for (int b = 0; b < 256; b++)
                if (!Printable(b)) pairs.Add(((byte)b, (char)(256 + n++)));
            return [.. pairs];
        }
    }
}
