using System.Globalization;
using System.Text.RegularExpressions;

namespace StableDiffusion.Pipelines.Prompts;

/// <summary>A run of prompt text and its attention weight, or a BREAK (which ends the current chunk).</summary>
public readonly record struct PromptSegment(string Text, double Weight, bool IsBreak = false)
{
    public static readonly PromptSegment Break = new("BREAK", -1, IsBreak: true);
}

/// <summary>
/// A1111's attention syntax (the rules stable-diffusion.cpp follows too): <c>(text)</c> multiplies the weight by 1.1,
/// <c>[text]</c> divides it by 1.1, <c>(text:w)</c> multiplies it by w, nesting multiplies, <c>\(</c> <c>\)</c>
/// <c>\[</c> <c>\]</c> <c>\\</c> are literal, brackets left open close at the end, a closing bracket with nothing open
/// is text, and <c>BREAK</c> (capitals, as a word) ends a chunk. Runs with equal weights are merged. Weights are
/// doubles, so the results equal A1111's to the last bit. Nothing here is ever an error.
/// </summary>
public static partial class PromptParser
{
    public const double RoundMultiplier = 1.1;
    public const double SquareMultiplier = 1 / 1.1;

    // Escapes, openers, "(text:w)"'s ":w)", closers, plain runs, a lone ':'.
    [GeneratedRegex(@"\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:([+-]?[.0-9]+)\)|\)|]|[^\\()\[\]:]+|:")]
    private static partial Regex Attention();

    [GeneratedRegex(@"\s*\bBREAK\b\s*", RegexOptions.Singleline)]
    private static partial Regex BreakWord();

    private static int Pop(List<int> stack)
    {
        int top = stack[^1];
        stack.RemoveAt(stack.Count - 1);
        return top;
    }

    public static IReadOnlyList<PromptSegment> Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var res = new List<(string Text, double Weight)>();
        var round = new List<int>();
        var square = new List<int>();

        void Multiply(int from, double m)
        {
            for (int p = from; p < res.Count; p++) res[p] = (res[p].Text, res[p].Weight * m);
        }

        foreach (Match m in Attention().Matches(text))
        {
            var t = m.Value;
            var w = m.Groups[1];
            if (t.StartsWith('\\')) res.Add((t[1..], 1.0));
            else if (t == "(") round.Add(res.Count);
            else if (t == "[") square.Add(res.Count);
            else if (w.Success && round.Count > 0 && double.TryParse(w.Value, NumberStyles.Float, CultureInfo.InvariantCulture, out var weight))
                Multiply(Pop(round), weight);
            else if (t == ")" && round.Count > 0) Multiply(Pop(round), RoundMultiplier);
            else if (t == "]" && square.Count > 0) Multiply(Pop(square), SquareMultiplier);
            else
            {
                // A weight that is not a number ("(a:1.2.3)", where A1111 raises) stays text.
                var parts = BreakWord().Split(t);
                for (int i = 0; i < parts.Length; i++)
                {
                    if (i > 0) res.Add(("BREAK", -1));
                    res.Add((parts[i], 1.0));
                }
            }
        }
        // Still open: closed at the end, outermost first (A1111's order, which decides the last bit).
        foreach (var pos in round) Multiply(pos, RoundMultiplier);
        foreach (var pos in square) Multiply(pos, SquareMultiplier);
        if (res.Count == 0) res.Add(("", 1.0));

        // Merge runs of identical weights (BREAK's -1 merges only with another BREAK, as in A1111).
        for (int i = 0; i + 1 < res.Count;)
        {
            if (res[i].Weight == res[i + 1].Weight)
            {
                res[i] = (res[i].Text + res[i + 1].Text, res[i].Weight);
                res.RemoveAt(i + 1);
            }
            else i++;
        }
        return res.Select(r => r.Weight == -1 && r.Text == "BREAK" ? PromptSegment.Break : new PromptSegment(r.Text, r.Weight)).ToList();
    }
}
