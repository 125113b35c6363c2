using System.Globalization;
using System.Text;
using StableDiffusion.Models.Clip;
using StableDiffusion.Pipelines.Prompts;

namespace StableDiffusion.Cli;

/// <summary>
/// <c>sd tokenize</c>: the CLIP token ids of a text as a JSON array, start and end tokens included, no padding.
/// The tokenizer comes from a diffusers <c>tokenizer/</c> folder (<c>--tokenizer</c>), from a diffusers model
/// folder (<c>--model</c>) or, with neither, is CLIP's built-in one; <c>--vocab</c> gives the vocabulary separately (a folder with vocab.json and merges.txt,
/// or CLIP's bpe_simple_vocab_16e6.txt.gz) for tokenizer folders that carry only their json files. With
/// <c>--chunks</c> it prints the prompt as the text encoder gets it: A1111's weights, BREAK and 77-id chunks.
/// </summary>
internal static class TokenizeCommand
{
    /// <param name="args">the arguments after <c>tokenize</c></param>
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        string? tokenizer = null, model = null, vocab = null, text = null;
        bool rest = false, chunks = false;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--" when !rest: rest = true; break;
                case "--tokenizer" when !rest: tokenizer = Value(args, ref i); break;
                case "--model" when !rest: model = Value(args, ref i); break;
                case "--vocab" when !rest: vocab = Value(args, ref i); break;
                case "--chunks" when !rest: chunks = true; break;
                case var a when !rest && a.StartsWith("--", StringComparison.Ordinal):
                    throw new UsageException($"unexpected option '{a}' for 'sd tokenize'; run 'sd --help'");
                case var a when text is null: text = a; break;
                default: throw new UsageException("'sd tokenize' takes one text (quote it)");
            }
        }
        if (text is null) throw new UsageException("'sd tokenize' needs a text, e.g. sd tokenize \"a photo of a cat\"");
        if (tokenizer is not null && model is not null)
            throw new UsageException("'sd tokenize' takes either --tokenizer (a tokenizer folder) or --model (a diffusers model folder), not both");

        var tok = tokenizer is null && model is null
            ? vocab is null ? ClipTokenizer.BuiltIn() : Directory.Exists(vocab) ? ClipTokenizer.FromFolder(vocab) : ClipTokenizer.FromBpeFile(vocab)
            : ClipTokenizer.FromFolder(tokenizer ?? TokenizerOf(model!), vocab);
        if (chunks)
        {
            // The prompt as the text encoder gets it: A1111's weights and BREAK, 77 ids per chunk.
            var parsed = new PromptChunker(tok).Chunk(text);
            var json = new StringBuilder("{\"chunks\": [");
            for (int c = 0; c < parsed.Count; c++)
            {
                if (c > 0) json.Append(", ");
                json.Append("{\"ids\": [").AppendJoin(", ", parsed[c].Ids).Append("], \"weights\": [")
                    .AppendJoin(", ", parsed[c].Weights.Select(w => w.ToString("R", CultureInfo.InvariantCulture))).Append("]}");
            }
            stdout.WriteLine(json.Append("]}"));
            return 0;
        }
        var ids = tok.Encode(text);
        stdout.WriteLine("[" + string.Join(",", ids) + "]");
        return 0;
    }

    private static string TokenizerOf(string model)
    {
        var folder = Path.Combine(model, "tokenizer");
        if (Directory.Exists(folder)) return folder;
        if (Directory.Exists(model)) throw new ConfigException($"{model}: the model folder has no tokenizer/ folder; give one with --tokenizer");
        if (File.Exists(model)) throw new UsageException($"{model}: a single-file checkpoint carries no tokenizer; give a tokenizer folder with --tokenizer");
        throw new ConfigException($"{model}: no such model folder");
    }

    private static string Value(string[] args, ref int i)
    {
        if (i + 1 >= args.Length || args[i + 1].StartsWith("--", StringComparison.Ordinal))
            throw new UsageException($"option {args[i]} needs a value");
        return args[++i];
    }
}
