using System.Buffers.Binary;
using System.Text;

namespace StableDiffusion.IO.Pickle;

/// <summary>
/// A pickle reader for PyTorch state dicts that executes nothing. It knows only the opcodes torch.save writes and
/// admits three kinds of global: <c>torch._utils._rebuild_tensor_v2</c>, <c>torch.*Storage</c> and
/// <c>collections.OrderedDict</c>. Those are names it interprets itself; any other global is refused the moment
/// it is read, so a hostile file (<c>os.system</c>, <c>builtins.eval</c>) fails before anything could happen.
/// Stack, memo and nesting are bounded so a hostile file cannot exhaust memory.
/// </summary>
internal sealed class Unpickler
{
    public const int MaxStack = 1 << 22;
    public const int MaxMemo = 1 << 22;
    public const int MaxMarkDepth = 1024;
    public const int MaxLongBytes = 8;

    // torch storage class name → stored element type (null: a real torch type sd does not load).
    internal static readonly Dictionary<string, WeightDType?> StorageTypes = new()
    {
        ["FloatStorage"] = WeightDType.F32,
        ["HalfStorage"] = WeightDType.F16,
        ["BFloat16Storage"] = WeightDType.BF16,
        ["LongStorage"] = WeightDType.I64,
        ["IntStorage"] = WeightDType.I32,
        ["DoubleStorage"] = null,
        ["ShortStorage"] = null,
        ["CharStorage"] = null,
        ["ByteStorage"] = null,
        ["BoolStorage"] = null,
        ["ComplexFloatStorage"] = null,
        ["ComplexDoubleStorage"] = null,
    };

    private static readonly PyGlobal OrderedDict = new("collections", "OrderedDict");
    private static readonly PyGlobal RebuildTensorV2 = new("torch._utils", "_rebuild_tensor_v2");

    private readonly byte[] data;
    private readonly string where;
    private readonly List<object> stack = [];
    private readonly List<int> marks = [];
    private readonly Dictionary<long, object> memo = [];
    private readonly Dictionary<string, PyStorage> storages = new(StringComparer.Ordinal);
    private int pos;
    private int opStart;

    private Unpickler(byte[] data, string where)
    {
        this.data = data;
        this.where = where;
    }

    /// <summary>Reads one pickle; <paramref name="where"/> names it in error messages (file and entry).</summary>
    public static object Load(byte[] data, string where) => new Unpickler(data, where).Run();

    private object Run()
    {
        while (true)
        {
            opStart = pos;
            byte op = U8();
            switch (op)
            {
                case 0x80: // PROTO
                {
                    int v = U8();
                    if (v > 5) throw Fail($"pickle protocol {v} is newer than 5");
                    break;
                }
                case 0x95: // FRAME: a length prefix for buffering; the opcodes inside are read as usual
                    Bytes(8);
                    break;
                case (byte)'c': // GLOBAL
                    Push(Global(Line(), Line()));
                    break;
                case 0x93: // STACK_GLOBAL
                {
                    var name = Pop();
                    var module = Pop();
                    if (module is not string m || name is not string n)
                        throw Fail($"STACK_GLOBAL needs two strings, got {Py.TypeName(module)} and {Py.TypeName(name)}");
                    Push(Global(m, n));
                    break;
                }
                case (byte)'q': Put(U8()); break; // BINPUT
                case (byte)'r': Put(U32()); break; // LONG_BINPUT
                case 0x94: Put(memo.Count); break; // MEMOIZE
                case (byte)'h': Get(U8()); break; // BINGET
                case (byte)'j': Get(U32()); break; // LONG_BINGET
                case (byte)'(': // MARK
                    if (marks.Count >= MaxMarkDepth) throw Fail($"more than {MaxMarkDepth} nested MARKs");
                    marks.Add(stack.Count);
                    break;
                case (byte)')': Push(new PyTuple([])); break; // EMPTY_TUPLE
                case (byte)'t': Push(new PyTuple(PopMark())); break; // TUPLE
                case 0x85: Push(new PyTuple([Pop()])); break; // TUPLE1
                case 0x86: // TUPLE2
                {
                    var b = Pop();
                    var a = Pop();
                    Push(new PyTuple([a, b]));
                    break;
                }
                case 0x87: // TUPLE3
                {
                    var c = Pop();
                    var b = Pop();
                    var a = Pop();
                    Push(new PyTuple([a, b, c]));
                    break;
                }
                case (byte)'}': Push(new PyDict()); break; // EMPTY_DICT
                case (byte)']': Push(new PyList()); break; // EMPTY_LIST
                case (byte)'a': // APPEND
                {
                    var v = Pop();
                    ListOnTop("APPEND").Items.Add(v);
                    break;
                }
                case (byte)'e': // APPENDS
                {
                    var items = PopMark();
                    ListOnTop("APPENDS").Items.AddRange(items);
                    break;
                }
                case (byte)'s': // SETITEM
                {
                    var v = Pop();
                    var k = Pop();
                    SetItem(DictOnTop("SETITEM"), k, v);
                    break;
                }
                case (byte)'u': // SETITEMS
                {
                    var items = PopMark();
                    if (items.Length % 2 != 0) throw Fail("SETITEMS with an odd number of items");
                    var d = DictOnTop("SETITEMS");
                    for (int i = 0; i < items.Length; i += 2) SetItem(d, items[i], items[i + 1]);
                    break;
                }
                case (byte)'X': Push(Utf8(Bytes(U32()))); break; // BINUNICODE
                case 0x8c: Push(Utf8(Bytes(U8()))); break; // SHORT_BINUNICODE
                case (byte)'B': Push(Bytes(U32()).ToArray()); break; // BINBYTES
                case (byte)'J': Push((long)BinaryPrimitives.ReadInt32LittleEndian(Bytes(4))); break; // BININT
                case (byte)'K': Push((long)U8()); break; // BININT1
                case (byte)'M': Push((long)BinaryPrimitives.ReadUInt16LittleEndian(Bytes(2))); break; // BININT2
                case 0x8a: Push(Long1()); break; // LONG1
                case (byte)'G': Push(BinaryPrimitives.ReadDoubleBigEndian(Bytes(8))); break; // BINFLOAT
                case (byte)'N': Push(PyNone.Value); break; // NONE
                case 0x88: Push(true); break; // NEWTRUE
                case 0x89: Push(false); break; // NEWFALSE
                case (byte)'Q': Push(PersistentLoad(Pop())); break; // BINPERSID
                case (byte)'R': // REDUCE
                {
                    var args = Pop();
                    var callable = Pop();
                    Push(Reduce(callable, args));
                    break;
                }
                case (byte)'b': // BUILD
                {
                    Pop(); // state
                    var target = Peek();
                    // OrderedDict state is its attribute dict (torch stores `_metadata` there); nothing sd needs.
                    if (target is not PyDict) throw Fail($"BUILD on a {Py.TypeName(target)}");
                    break;
                }
                case (byte)'.': // STOP
                    if (stack.Count == 0) throw Fail("STOP with an empty stack");
                    return stack[^1];
                default:
                    throw Fail($"unsupported pickle opcode 0x{op:x2}{OpName(op)}");
            }
        }
    }

    private object Global(string module, string name)
    {
        var g = new PyGlobal(module, name);
        if (g == OrderedDict || g == RebuildTensorV2) return g;
        if (module == "torch" && StorageTypes.ContainsKey(name)) return g;
        throw Fail($"refers to the global {Text.Q(module + "." + name)}, which is not allowed " +
                   "(only torch._utils._rebuild_tensor_v2, torch.*Storage and collections.OrderedDict are; nothing was executed)");
    }

    private object Reduce(object callable, object args)
    {
        if (args is not PyTuple t) throw Fail($"REDUCE with {Py.TypeName(args)} arguments");
        if (callable is PyGlobal g0 && g0 == OrderedDict)
        {
            if (t.Items.Length != 0) throw Fail("collections.OrderedDict called with arguments");
            return new PyDict();
        }
        if (callable is PyGlobal g && g == RebuildTensorV2) return RebuildTensor(t.Items);
        throw Fail($"REDUCE calls {Py.TypeName(callable)}, which is not callable here");
    }

    // _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
    private PyTensor RebuildTensor(object[] a)
    {
        if (a.Length is not (6 or 7) || a[0] is not PyStorage storage || a[1] is not long offset ||
            a[2] is not PyTuple size || a[3] is not PyTuple stride || a[4] is not bool)
            throw Fail("_rebuild_tensor_v2 called with arguments other than (storage, offset, size, stride, requires_grad, hooks)");
        return new PyTensor(storage, offset, Ints(size, "size"), Ints(stride, "stride"));
    }

    private long[] Ints(PyTuple t, string what)
    {
        var r = new long[t.Items.Length];
        for (int i = 0; i < r.Length; i++)
            r[i] = t.Items[i] is long v ? v : throw Fail($"tensor {what} holds a {Py.TypeName(t.Items[i])}, not an int");
        return r;
    }

    // torch.save's persistent id for a storage: ('storage', storage_type, key, location, numel).
    private PyStorage PersistentLoad(object pid)
    {
        if (pid is not PyTuple { Items: [string kind, PyGlobal type, string key, string, long numel] } || kind != "storage")
            throw Fail($"persistent id is not ('storage', type, key, location, numel)");
        if (type.Module != "torch" || !StorageTypes.TryGetValue(type.Name, out var dtype))
            throw Fail($"persistent id names {Text.Q(type.ToString())}, not a torch storage type");
        if (numel < 0) throw Fail($"storage {Text.Q(key)} has {numel} elements");
        if (storages.TryGetValue(key, out var known))
        {
            if (known.TypeName != type.Name || known.Elements != numel)
                throw Fail($"storage {Text.Q(key)} is described twice, differently");
            return known;
        }
        var s = new PyStorage(type.Name, dtype, key, numel);
        storages[key] = s;
        return s;
    }

    private void SetItem(PyDict d, object key, object value)
    {
        if (!d.Set(key, value)) throw Fail($"dict key of type {Py.TypeName(key)}");
    }

    private PyList ListOnTop(string op) =>
        Peek() as PyList ?? throw Fail($"{op} onto a {Py.TypeName(Peek())}, not a list");

    private PyDict DictOnTop(string op) =>
        Peek() as PyDict ?? throw Fail($"{op} onto a {Py.TypeName(Peek())}, not a dict");

    private void Put(long index)
    {
        if (memo.Count >= MaxMemo && !memo.ContainsKey(index)) throw Fail($"more than {MaxMemo} memo entries");
        memo[index] = Peek();
    }

    private void Get(long index) =>
        Push(memo.TryGetValue(index, out var v) ? v : throw Fail($"memo entry {index} was never stored"));

    private void Push(object o)
    {
        if (stack.Count >= MaxStack) throw Fail($"stack deeper than {MaxStack}");
        stack.Add(o);
    }

    private object Pop()
    {
        if (stack.Count == 0 || (marks.Count > 0 && stack.Count <= marks[^1])) throw Fail("stack underflow");
        var o = stack[^1];
        stack.RemoveAt(stack.Count - 1);
        return o;
    }

    private object Peek()
    {
        if (stack.Count == 0 || (marks.Count > 0 && stack.Count <= marks[^1])) throw Fail("stack underflow");
        return stack[^1];
    }

    private object[] PopMark()
    {
        if (marks.Count == 0) throw Fail("no MARK to pop to");
        int m = marks[^1];
        marks.RemoveAt(marks.Count - 1);
        var items = stack.GetRange(m, stack.Count - m).ToArray();
        stack.RemoveRange(m, stack.Count - m);
        return items;
    }

    private long Long1()
    {
        int n = U8();
        if (n > MaxLongBytes) throw Fail($"LONG1 of {n} bytes (at most {MaxLongBytes} supported)");
        var b = Bytes(n);
        if (n == 0) return 0;
        long v = (sbyte)b[n - 1]; // two's complement, little-endian: the top byte carries the sign
        for (int i = n - 2; i >= 0; i--) v = (v << 8) | b[i];
        return v;
    }

    private string Line()
    {
        int start = pos;
        int end = Array.IndexOf(data, (byte)'\n', pos, Math.Min(256, data.Length - pos));
        if (end < 0) throw Fail("GLOBAL name without a newline in its first 256 bytes");
        pos = end + 1;
        return Encoding.UTF8.GetString(data, start, end - start);
    }

    private string Utf8(ReadOnlySpan<byte> b)
    {
        try
        {
            return new UTF8Encoding(false, throwOnInvalidBytes: true).GetString(b);
        }
        catch (DecoderFallbackException)
        {
            throw Fail("string that is not valid UTF-8");
        }
    }

    private byte U8() => Bytes(1)[0];

    private long U32() => BinaryPrimitives.ReadUInt32LittleEndian(Bytes(4));

    private ReadOnlySpan<byte> Bytes(long n)
    {
        if (n > data.Length - pos) throw Fail($"truncated: needs {n} more bytes, {data.Length - pos} left");
        var s = data.AsSpan(pos, (int)n);
        pos += (int)n;
        return s;
    }

    private WeightsException Fail(string what) => new($"{where}: offset {opStart}: {what}");

    private static string OpName(byte op) => Names.TryGetValue(op, out var n) ? $" ({n}, not used by torch.save state dicts)" : "";

    // Opcodes pickle defines that this reader deliberately lacks, named so a refusal says what it saw.
    private static readonly Dictionary<byte, string> Names = new()
    {
        [(byte)'I'] = "INT", [(byte)'L'] = "LONG", [(byte)'F'] = "FLOAT", [(byte)'S'] = "STRING", [(byte)'T'] = "BINSTRING",
        [(byte)'U'] = "SHORT_BINSTRING", [(byte)'V'] = "UNICODE", [(byte)'C'] = "SHORT_BINBYTES", [0x8e] = "BINBYTES8",
        [0x8d] = "BINUNICODE8", [0x8b] = "LONG4", [(byte)'d'] = "DICT", [(byte)'l'] = "LIST", [(byte)'i'] = "INST",
        [(byte)'o'] = "OBJ", [0x81] = "NEWOBJ", [0x92] = "NEWOBJ_EX", [0x82] = "EXT1", [0x83] = "EXT2", [0x84] = "EXT4",
        [(byte)'P'] = "PERSID", [(byte)'p'] = "PUT", [(byte)'g'] = "GET", [(byte)'0'] = "POP", [(byte)'1'] = "POP_MARK",
        [(byte)'2'] = "DUP", [0x8f] = "EMPTY_SET", [0x90] = "ADDITEMS", [0x91] = "FROZENSET", [0x96] = "BYTEARRAY8",
        [0x97] = "NEXT_BUFFER", [0x98] = "READONLY_BUFFER",
    };
}
