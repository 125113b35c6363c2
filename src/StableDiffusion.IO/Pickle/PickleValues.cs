namespace StableDiffusion.IO.Pickle;

// The only values the restricted unpickler builds. Nothing here can run code or name a .NET type.

internal sealed class PyNone
{
    public static readonly PyNone Value = new();
    private PyNone() { }
}

internal sealed class PyTuple(object[] items)
{
    public object[] Items { get; } = items;
}

internal sealed class PyList
{
    public List<object> Items { get; } = [];
}

/// <summary>A dict (or OrderedDict) keeping insertion order. Keys are strings, integers, booleans or None.</summary>
internal sealed class PyDict
{
    private readonly Dictionary<object, int> index = [];

    public List<KeyValuePair<object, object>> Entries { get; } = [];

    public bool Set(object key, object value)
    {
        if (key is not (string or long or bool or PyNone)) return false;
        if (index.TryGetValue(key, out var i)) Entries[i] = new(key, value);
        else
        {
            index[key] = Entries.Count;
            Entries.Add(new(key, value));
        }
        return true;
    }

    public object? Get(object key) => index.TryGetValue(key, out var i) ? Entries[i].Value : null;
}

/// <summary>A global the allow-list admitted; it is a name only, looked up by the unpickler's own switch.</summary>
internal sealed record PyGlobal(string Module, string Name)
{
    public override string ToString() => $"{Module}.{Name}";
}

/// <summary>A storage named by a persistent id: its bytes are the zip entry <c>data/&lt;Key&gt;</c>.</summary>
internal sealed record PyStorage(string TypeName, WeightDType? DType, string Key, long Elements);

/// <summary>What <c>torch._utils._rebuild_tensor_v2</c> would have built: a view into a storage.</summary>
internal sealed record PyTensor(PyStorage Storage, long StorageOffset, long[] Shape, long[] Stride);

internal static class Py
{
    public static string TypeName(object o) => o switch
    {
        PyNone => "None",
        string => "str",
        long => "int",
        bool => "bool",
        double => "float",
        byte[] => "bytes",
        PyTuple => "tuple",
        PyList => "list",
        PyDict => "dict",
        PyGlobal g => g.ToString(),
        PyStorage => "storage",
        PyTensor => "tensor",
        _ => o.GetType().Name,
    };
}
