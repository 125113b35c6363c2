using StableDiffusion.Pipelines.Prompts;

namespace StableDiffusion.Pipelines.Tests.Prompts;

/// <summary>The examples of A1111's parse_prompt_attention docstring (modules/prompt_parser.py), exactly, and edge cases.</summary>
public class PromptParserTests
{
    private static (string, double)[] P(string text) =>
        PromptParser.Parse(text).Select(s => s.IsBreak ? ("BREAK", -1.0) : (s.Text, s.Weight)).ToArray();

    [Fact]
    public void Published_examples()
    {
        Assert.Equal([("normal text", 1.0)], P("normal text"));
        Assert.Equal([("an ", 1.0), ("important", 1.1), (" word", 1.0)], P("an (important) word"));
        Assert.Equal([("unbalanced", 1.1)], P("(unbalanced"));
        Assert.Equal([("(literal]", 1.0)], P(@"\(literal\]"));
        Assert.Equal([("unnecessaryparens", 1.1)], P("(unnecessary)(parens)"));
        // Python's doubles, to the last bit.
        Assert.Equal(
        [
            ("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
            (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1),
        ], P("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky)))."));
    }

    [Fact]
    public void Square_brackets_nesting_and_explicit_weights()
    {
        Assert.Equal([("a ", 1.0), ("b", 1 / 1.1), (" c", 1.0)], P("a [b] c"));
        Assert.Equal([("x", 1 / 1.1 / 1.1)], P("[[x]]"));
        Assert.Equal([("x", 0.5 * 1.1)], P("((x:0.5))"));
        Assert.Equal([("x", 1.3), ("y", 1.3 * 2)], P("(x(y:2):1.3)"));
        Assert.Equal([("x", -0.5)], P("(x:-0.5)"));
    }

    [Fact]
    public void Odd_brackets_are_never_errors()
    {
        Assert.Equal([("a)b", 1.0)], P("a)b"));
        Assert.Equal([("a)b]", 1.0)], P("a)b]"));
        Assert.Equal([("x", 1.0 * 1.1 * (1 / 1.1))], P("([x"));          // both closed at the end
        Assert.Equal([("a:b", 1.0)], P("a:b"));
        Assert.Equal([("x:1.2.3)", 1.1)], P("(x:1.2.3)"));   // not a number: text (A1111 would raise), the bracket stays open
        Assert.Equal([(@"a\b", 1.0)], P(@"a\\b"));
        Assert.Equal([("", 1.0)], P(""));
        Assert.Equal([("", 1.0)], P("()"));
        Assert.Equal([("<lora:x:0.5>", 1.0)], P("<lora:x:0.5>")); // angle brackets are text
    }

    [Fact]
    public void Break_splits_only_as_a_capitalised_word()
    {
        Assert.Equal([("a", 1.0), ("BREAK", -1.0), ("b", 1.0)], P("a BREAK b"));
        Assert.Equal([("a break b", 1.0)], P("a break b"));
        Assert.Equal([("aBREAK b", 1.0)], P("aBREAK b"));
        Assert.Equal([("a", 1.0), ("BREAK", -1.0), ("", 1.0), ("b", 1.1)], P("a BREAK (b)"));
        Assert.Equal([("a,", 1.0), ("BREAK", -1.0), ("b", 1.0)], P("a,BREAK b"));
    }
}
