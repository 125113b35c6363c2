using System.Text.Json;
using StableDiffusion.Models.Clip;
using StableDiffusion.TestSupport;

namespace StableDiffusion.Models.Tests.Clip;

public class ClipTokenizerTests
{
    private static readonly Lazy<ClipTokenizer> Sd15 = new(() => ClipTokenizer.FromFolder(SharedReference.Require("configs", "sd15", "tokenizer")));

    private static ClipTokenizer Sd15Tokenizer()
    {
        SharedReference.Require("configs", "sd15", "tokenizer");
        return Sd15.Value;
    }

    private static List<(string Text, int[] Ids)> Cases()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(SharedReference.Require("tokenizer-cases.json")));
        return doc.RootElement.GetProperty("cases").EnumerateArray()
            .Select(c => (c.GetProperty("text").GetString()!, c.GetProperty("ids").EnumerateArray().Select(i => i.GetInt32()).ToArray()))
            .ToList();
    }

    /// <summary>One test per published case (by index, with its text for the name); a single skipped one without the reference.</summary>
    public static IEnumerable<object[]> CaseIndices()
    {
        if (SharedReference.Root is null)
        {
            yield return [-1, "(reference absent)"];
            yield break;
        }
        var n = 0;
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(SharedReference.Root, "tokenizer-cases.json")));
        foreach (var c in doc.RootElement.GetProperty("cases").EnumerateArray())
            yield return [n++, c.GetProperty("text").GetString()!];
    }

    [SkippableTheory]
    [MemberData(nameof(CaseIndices))]
    public void Produces_the_published_ids(int index, string text)
    {
        Skip.If(index < 0, "../shared/reference is not present beside the repository");
        var (caseText, ids) = Cases()[index];
        Assert.Equal(caseText, text);
        Assert.Equal(ids, Sd15Tokenizer().Encode(text));
    }

    [SkippableFact]
    public void Clip_bpe_file_gives_the_same_vocabulary_and_ids_as_the_diffusers_folder()
    {
        var folder = Sd15Tokenizer();
        var gz = ClipTokenizer.FromBpeFile(SharedReference.Require("clip", "bpe_simple_vocab_16e6.txt.gz"));
        foreach (var (text, ids) in Cases()) Assert.Equal(ids, gz.Encode(text));
        // The whole vocabulary, not only the ids the cases reach.
        using var doc = JsonDocument.Parse(File.ReadAllText(SharedReference.Require("configs", "sd15", "tokenizer", "vocab.json")));
        var byId = doc.RootElement.EnumerateObject().ToDictionary(p => p.Value.GetInt32(), p => p.Name);
        Assert.Equal(49408, byId.Count);
        var all = Enumerable.Range(0, 49408).ToArray();
        Assert.Equal(folder.Decode(all), gz.Decode(all));
        Assert.Equal((49406, 49407, 49407), (gz.StartId, gz.EndId, gz.PadId));
    }

    [SkippableFact]
    public void Built_in_vocabulary_gives_every_published_case_and_the_whole_sd15_vocabulary()
    {
        var builtIn = ClipTokenizer.BuiltIn();
        foreach (var (text, ids) in Cases()) Assert.Equal(ids, builtIn.Encode(text));
        var all = Enumerable.Range(0, 49408).ToArray();
        Assert.Equal(Sd15Tokenizer().Decode(all), builtIn.Decode(all));
        Assert.Equal((49406, 49407, 49407), (builtIn.StartId, builtIn.EndId, builtIn.PadId));
        Assert.Equal(0, ClipTokenizer.BuiltIn(ClipTokenizer.OpenClipPadToken).PadId);
    }

    [SkippableFact]
    public void Written_vocabulary_is_the_sd15_folders_vocabulary()
    {
        using var dir = new TempFolder("sd-clip-vocab");
        ClipTokenizer.BuiltIn().WriteVocabulary(dir.Path);
        var reference = SharedReference.Require("configs", "sd15", "tokenizer");
        using var mine = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir.Path, "vocab.json")));
        using var theirs = JsonDocument.Parse(File.ReadAllText(Path.Combine(reference, "vocab.json")));
        var a = mine.RootElement.EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetInt32());
        var b = theirs.RootElement.EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetInt32());
        Assert.Equal(b.Count, a.Count);
        Assert.All(b, kv => Assert.Equal(kv.Value, a[kv.Key]));
        static string[] Merges(string f) => File.ReadAllLines(f).Where(l => l.Length > 0 && !l.StartsWith('#')).ToArray();
        Assert.Equal(Merges(Path.Combine(reference, "merges.txt")), Merges(Path.Combine(dir.Path, "merges.txt")));
    }

    [SkippableFact]
    public void Sd1_pads_with_the_end_token()
    {
        var t = Sd15Tokenizer().Tokenize("a photo of a cat");
        Assert.Equal(77, t.Ids.Length);
        Assert.Equal(7, t.Length);
        Assert.False(t.Truncated);
        Assert.Equal([49406, 320, 1125, 539, 320, 2368, 49407], t.Ids[..7]);
        Assert.All(t.Ids[7..], id => Assert.Equal(49407, id));
    }

    [SkippableFact]
    public void Sd2_pads_with_the_exclamation_mark_from_special_tokens_map_with_clips_vocabulary_from_elsewhere()
    {
        var sd2 = SharedReference.Require("configs", "sd21-base", "tokenizer");
        Assert.False(File.Exists(Path.Combine(sd2, "vocab.json"))); // the reference copy has only the json configs
        foreach (var vocabulary in new[] { SharedReference.Require("configs", "sd15", "tokenizer"), SharedReference.Require("clip", "bpe_simple_vocab_16e6.txt.gz") })
        {
            var tok = ClipTokenizer.FromFolder(sd2, vocabulary);
            Assert.Equal(("!", 0), (tok.PadToken, tok.PadId));
            var t = tok.Tokenize("An astronaut riding a horse");
            Assert.Equal([49406, 550, 18376, 6765, 320, 4558, 49407], t.Ids[..7]);
            Assert.All(t.Ids[7..], id => Assert.Equal(0, id));
        }
    }

    [SkippableFact]
    public void Special_tokens_map_takes_precedence_over_tokenizer_config()
    {
        var vocab = SharedReference.Require("configs", "sd15", "tokenizer");
        using var dir = new TempFolder("sd-clip-tests");
        File.WriteAllText(Path.Combine(dir.Path, "tokenizer_config.json"), """{"pad_token": {"__type": "AddedToken", "content": "<|endoftext|>"}}""");
        Assert.Equal(49407, ClipTokenizer.FromFolder(dir.Path, vocab).PadId);
        File.WriteAllText(Path.Combine(dir.Path, "special_tokens_map.json"), """{"pad_token": "!"}""");
        Assert.Equal(0, ClipTokenizer.FromFolder(dir.Path, vocab).PadId);
        File.WriteAllText(Path.Combine(dir.Path, "special_tokens_map.json"), """{"bos_token": "<|startoftext|>"}""");
        Assert.Equal(49407, ClipTokenizer.FromFolder(dir.Path, vocab).PadId); // no pad_token there: the next file decides
    }

    [SkippableFact]
    public void Long_prompts_are_truncated_to_77_with_a_warning_naming_what_was_dropped()
    {
        var tok = Sd15Tokenizer();
        var words = Enumerable.Range(0, 80).Select(i => i % 2 == 0 ? "cat" : "dog").ToList();
        var warnings = new List<string>();
        var t = tok.Tokenize(string.Join(' ', words) + " tail end", warnings.Add);
        Assert.True(t.Truncated);
        Assert.Equal(77, t.Length);
        Assert.Equal(49406, t.Ids[0]);
        Assert.Equal(49407, t.Ids[76]);
        Assert.Equal(tok.Encode(string.Join(' ', words[..75]))[1..^1], t.Ids[1..76]);
        Assert.Equal(string.Join(' ', words[75..]) + " tail end", t.DroppedText);
        var w = Assert.Single(warnings);
        Assert.Contains("77 tokens", w);
        Assert.Contains("dog tail end", w);

        // 75 text tokens fit exactly: nothing dropped, no warning.
        var exact = tok.Tokenize(string.Join(' ', words[..75]), warnings.Add);
        Assert.False(exact.Truncated);
        Assert.Equal(77, exact.Length);
        Assert.Single(warnings);
    }

    [SkippableFact]
    public void Clean_up_collapses_whitespace_and_lowercases_and_non_ascii_survives()
    {
        var tok = Sd15Tokenizer();
        Assert.Equal(tok.Encode("a photo of a cat"), tok.Encode("  A\tPHOTO\n\nof   a  Cat \r\n"));
        var composed = tok.Encode("CAF\u00c9 cr\u00e8me");
        Assert.Equal(tok.Encode("caf\u00e9 cr\u00e8me"), composed);
        Assert.Equal("caf\u00e9 cr\u00e8me", tok.Decode(composed.AsSpan(1, composed.Length - 2)));
        var emoji = tok.Encode("a \U0001F600 cat 東京");
        Assert.DoesNotContain(tok.EndId, emoji[1..^1]); // byte-level BPE never falls back to the unknown token (<|endoftext|>)
        Assert.Equal("a \U0001F600 cat 東京", tok.Decode(emoji.AsSpan(1, emoji.Length - 2)));
    }

    [SkippableFact]
    public void A_prompt_that_spells_a_special_token_keeps_it_whole()
    {
        var tok = Sd15Tokenizer();
        Assert.Equal([49406, 320, 49407, 2368, 49407], tok.Encode("a <|endoftext|> cat"));
    }

    [Fact]
    public void Missing_folder_and_files_are_one_line_config_errors()
    {
        using var dir = new TempFolder("sd-clip-tests");
        var missing = Path.Combine(dir.Path, "nope");
        var e = Assert.Throws<ConfigException>(() => ClipTokenizer.FromFolder(missing));
        Assert.Equal($"{missing}: tokenizer folder not found", e.Message);

        // A folder with neither vocabulary file takes the built-in one; with one of the two it is an error.
        Assert.Contains(ClipTokenizer.BuiltInSource, ClipTokenizer.FromFolder(dir.Path).Source);

        File.WriteAllText(Path.Combine(dir.Path, "vocab.json"), "{}");
        e = Assert.Throws<ConfigException>(() => ClipTokenizer.FromFolder(dir.Path));
        Assert.Contains("no merges.txt", e.Message);
        Assert.DoesNotContain('\n', e.Message);

        File.WriteAllText(Path.Combine(dir.Path, "merges.txt"), "#version: 0.2\na b\n");
        e = Assert.Throws<ConfigException>(() => ClipTokenizer.FromFolder(dir.Path));
        Assert.Contains("\"<|startoftext|>\" is not in the vocabulary", e.Message);

        File.WriteAllText(Path.Combine(dir.Path, "vocab.json"), "{\"a\": ");
        e = Assert.Throws<ConfigException>(() => ClipTokenizer.FromFolder(dir.Path));
        Assert.Contains("vocab.json: not valid JSON", e.Message);

        e = Assert.Throws<ConfigException>(() => ClipTokenizer.FromFolder(dir.Path, Path.Combine(dir.Path, "bpe.txt.gz")));
        Assert.Contains("bpe.txt.gz: vocabulary not found", e.Message);
        File.WriteAllText(Path.Combine(dir.Path, "bpe.txt.gz"), "not gzip");
        e = Assert.Throws<ConfigException>(() => ClipTokenizer.FromFolder(dir.Path, Path.Combine(dir.Path, "bpe.txt.gz")));
        Assert.Contains("not a gzip file", e.Message);
    }

    [SkippableFact]
    public void A_pad_token_missing_from_the_vocabulary_is_named()
    {
        var vocab = SharedReference.Require("configs", "sd15", "tokenizer");
        using var dir = new TempFolder("sd-clip-tests");
        File.WriteAllText(Path.Combine(dir.Path, "special_tokens_map.json"), """{"pad_token": "<pad>"}""");
        var e = Assert.Throws<ConfigException>(() => ClipTokenizer.FromFolder(dir.Path, vocab));
        Assert.Contains("token \"<pad>\" is not in the vocabulary", e.Message);
    }
}
