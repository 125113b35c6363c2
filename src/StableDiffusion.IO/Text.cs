using System.Text;

namespace StableDiffusion.IO;

/// <summary>Names from files go into one-line error messages: quote them, escape control characters, clip long ones.</summary>
internal static class Text
{
    public static string Q(string? s)
    {
        if (s is null) return "(none)";
        var b = new StringBuilder(s.Length + 2).Append('\'');
        int limit = Math.Min(s.Length, 160);
        for (int i = 0; i < limit; i++)
        {
            char c = s[i];
            if (char.IsControl(c) || c is '\u2028' or '\u2029') b.Append($"\\u{(int)c:x4}");
            else b.Append(c);
        }
        if (s.Length > limit) b.Append('…');
        return b.Append('\'').ToString();
    }

    public static string OneLine(string s)
    {
        var b = new StringBuilder(s.Length);
        foreach (var c in s) b.Append(char.IsControl(c) || c is '\u2028' or '\u2029' ? ' ' : c);
        return b.ToString().Trim();
    }
}
