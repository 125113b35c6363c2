using StableDiffusion.Models.Clip;
using StableDiffusion.Pipelines.Prompts;

namespace StableDiffusion.Pipelines.Tests.Prompts;

/// <summary>A1111's chunking rules on the built-in CLIP tokenizer ("cat" is one token, 2368; "," is 267).</summary>
public class PromptChunkerTests
{
    private static readonly ClipTokenizer Tok = ClipTokenizer.BuiltIn();
    private const int Cat = 2368, Dog = 1929, Comma = 267, Start = 49406, End = 49407;

    private static string Cats(int n) => string.Join(' ', Enumerable.Repeat("cat", n));

    [Fact]
    public void Short_prompt_is_one_chunk_padded_after_its_end_token()
    {
        var c = Assert.Single(new PromptChunker(Tok).Chunk("a cat"));
        Assert.Equal(77, c.Ids.Length);
        Assert.Equal([Start, 320, Cat, End], c.Ids[..4]);
        Assert.All(c.Ids[4..], id => Assert.Equal(End, id));
        Assert.All(c.Weights, w => Assert.Equal(1f, w));
        var sd2 = Assert.Single(new PromptChunker(ClipTokenizer.BuiltIn("!")).Chunk("a cat"));
        Assert.Equal(End, sd2.Ids[3]);
        Assert.All(sd2.Ids[4..], id => Assert.Equal(0, id)); // OpenCLIP pads with "!" after the end token
        Assert.Equal([Start, End], Assert.Single(new PromptChunker(Tok).Chunk("")).Ids[..2]);
    }

    [Fact]
    public void Seventy_five_tokens_fill_one_chunk_and_the_seventy_sixth_starts_another()
    {
        var one = Assert.Single(new PromptChunker(Tok).Chunk(Cats(75)));
        Assert.Equal(End, one.Ids[76]);
        var two = new PromptChunker(Tok).Chunk(Cats(76));
        Assert.Equal(2, two.Count);
        Assert.All(two[0].Ids[1..76], id => Assert.Equal(Cat, id));
        Assert.Equal([Start, Cat, End, End], two[1].Ids[..4]);
        Assert.Equal(4, new PromptChunker(Tok).Chunk(Cats(300)).Count);
        Assert.Equal(5, new PromptChunker(Tok).Chunk(Cats(301)).Count);
    }

    [Fact]
    public void Overflow_breaks_after_a_comma_within_twenty_tokens()
    {
        // 60 cats, a comma, 20 dogs: the chunk fills at 75 (comma at 60, 15 back), so the dogs after it move on.
        var chunks = new PromptChunker(Tok).Chunk(Cats(60) + ", " + string.Join(' ', Enumerable.Repeat("dog", 20)));
        Assert.Equal(2, chunks.Count);
        Assert.Equal(Comma, chunks[0].Ids[61]);
        Assert.Equal(End, chunks[0].Ids[62]);
        Assert.Equal(Enumerable.Repeat(Dog, 20), chunks[1].Ids[1..21]);
        Assert.Equal(End, chunks[1].Ids[21]);

        // A comma 25 tokens back is too far: a plain cut at 75.
        chunks = new PromptChunker(Tok).Chunk(Cats(50) + ", " + string.Join(' ', Enumerable.Repeat("dog", 30)));
        Assert.Equal(Comma, chunks[0].Ids[51]);
        Assert.Equal(Dog, chunks[0].Ids[75]);
        Assert.Equal(Enumerable.Repeat(Dog, 6), chunks[1].Ids[1..7]);
    }

    [Fact]
    public void Break_pads_the_chunk_and_weights_follow_their_tokens()
    {
        var chunks = new PromptChunker(Tok).Chunk("(cat:1.5) BREAK [dog] BREAK");
        Assert.Equal(2, chunks.Count); // a trailing BREAK leaves no empty chunk
        Assert.Equal([Start, Cat, End], chunks[0].Ids[..3]);
        Assert.Equal([1f, 1.5f, 1f], chunks[0].Weights[..3]);
        Assert.Equal([Start, Dog, End], chunks[1].Ids[..3]);
        Assert.Equal((float)(1 / 1.1), chunks[1].Weights[1]);
        Assert.True(chunks[1].IsWeighted);
    }

    [Fact]
    public void Prompt_and_negative_are_padded_to_the_same_number_of_chunks()
    {
        var all = new PromptChunker(Tok).ChunkAll([Cats(100), "blurry"]);
        Assert.Equal(2, all[0].Count);
        Assert.Equal(2, all[1].Count);
        Assert.Equal([Start, End, End], all[1][1].Ids[..3]);
    }

    [Fact]
    public void Embeddings_take_slots_by_name_or_comfyui_prefix_and_never_straddle_chunks()
    {
        var chunker = new PromptChunker(Tok, new Dictionary<string, int> { ["bad-hands"] = 3, ["style"] = 2 });
        var c = Assert.Single(chunker.Chunk("a cat, (bad-hands:1.2) embedding:style"));
        Assert.Equal([Start, 320, Cat, Comma], c.Ids[..4]);
        Assert.Equal(
            [new EmbeddingSlot(4, "bad-hands", 0), new EmbeddingSlot(5, "bad-hands", 1), new EmbeddingSlot(6, "bad-hands", 2),
             new EmbeddingSlot(7, "style", 0), new EmbeddingSlot(8, "style", 1)], c.Embeddings);
        Assert.Equal([1.2f, 1.2f, 1.2f, 1f, 1f], c.Weights[4..9]);
        Assert.Equal(End, c.Ids[9]);
        Assert.Empty(Assert.Single(chunker.Chunk("stylish bad-handsome")).Embeddings); // whole words only

        var two = chunker.Chunk(Cats(74) + " bad-hands");
        Assert.Equal(2, two.Count);
        Assert.Equal(End, two[0].Ids[75]);
        Assert.Equal([1, 2, 3], two[1].Embeddings.Select(s => s.Position));
    }
}
