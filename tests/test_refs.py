"""References between models (``co.Ref``) and ``Repository.load_related``, on every backend."""

import __future__

import dataclasses
import sys
import types
from typing import Annotated, Any

import pytest

import cacheorm as co
from cacheorm import _refs
from tests.servers import RedisServer


@dataclasses.dataclass
class Company:
    """A model nobody's key depends on: the end of a reference chain."""

    id: Annotated[int, co.Field(primary_key=True)]
    name: str


@dataclasses.dataclass
class User:
    """An optional reference."""

    id: Annotated[int, co.Field(primary_key=True)]
    name: str
    company_id: Annotated[int | None, co.Ref(Company)] = None


@dataclasses.dataclass
class Post:
    """One required reference, one optional, one list, one by name (Tag comes later)."""

    id: Annotated[int, co.Field(primary_key=True)]
    author_id: Annotated[int, co.Ref(User)]
    editor_id: Annotated[int, co.Ref(User)] | None = None
    tag_ids: Annotated[list[int], co.Ref("Tag")] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Tag:
    """Defined after Post, which names it as ``Ref("Tag")``."""

    id: Annotated[int, co.Field(primary_key=True)]
    label: str


@dataclasses.dataclass
class Employee:
    """A self-reference, by name (the class does not exist yet in its own body)."""

    id: Annotated[int, co.Field(primary_key=True)]
    name: str
    manager_id: Annotated[int | None, co.Ref("Employee")] = None


@dataclasses.dataclass
class Setting:
    """A composite primary key."""

    user_id: Annotated[int, co.Field(primary_key=True)]
    name: Annotated[str, co.Field(primary_key=True)]
    value: str = ""


@dataclasses.dataclass
class Profile:
    """References to a composite key: one tuple, and a list of them."""

    id: Annotated[int, co.Field(primary_key=True)]
    theme: Annotated[tuple[int, str] | None, co.Ref(Setting)] = None
    extras: Annotated[list[tuple[int, str]], co.Ref(Setting)] = dataclasses.field(
        default_factory=list
    )


@dataclasses.dataclass
class Author:
    """Half of a cycle: an author's best book, a book's author."""

    id: Annotated[int, co.Field(primary_key=True)]
    best_book_id: Annotated[int | None, co.Ref("Book")] = None


@dataclasses.dataclass
class Book:
    """The other half of the cycle."""

    id: Annotated[int, co.Field(primary_key=True)]
    author_id: Annotated[int, co.Ref(Author)]


_BACKEND_METHODS = [
    "get",
    "get_many",
    "set",
    "set_many",
    "add",
    "add_many",
    "replace",
    "replace_many",
    "delete",
    "delete_many",
    "exists",
    "incr",
    "gets",
    "cas",
    "close",
]


class CountingBackend:
    """A real backend behind a wrapper that records the name of every call made to it."""

    def __init__(self, inner: co.Backend) -> None:
        self.inner = inner
        self.calls: list[str] = []


def _delegate(name: str) -> Any:
    def method(self: CountingBackend, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(name)
        return getattr(self.inner, name)(*args, **kwargs)

    method.__name__ = name
    return method


for _name in _BACKEND_METHODS:
    setattr(CountingBackend, _name, _delegate(_name))


@pytest.fixture
def counting(backend: co.Backend) -> CountingBackend:
    """The parametrised real backend, wrapped to count calls."""
    wrapper = CountingBackend(backend)
    assert isinstance(wrapper, co.Backend)
    return wrapper


class Blog:
    """Repositories of the blog models on one backend, with some records."""

    def __init__(self, backend: Any) -> None:
        self.companies = co.Repository(Company, backend=backend)
        self.users = co.Repository(User, backend=backend)
        self.posts = co.Repository(Post, backend=backend)
        self.tags = co.Repository(Tag, backend=backend)
        self.companies.create_many([Company(1, "Acme"), Company(2, "Initech")])
        self.users.create_many(
            [User(1, "Ann", 1), User(2, "Bob", 2), User(3, "Cy", 1), User(4, "Di")]
        )
        self.tags.create_many([Tag(1, "python"), Tag(2, "cache"), Tag(3, "orm")])
        self.posts.create_many(
            [
                Post(1, author_id=1, editor_id=2, tag_ids=[1, 2]),
                Post(2, author_id=1, tag_ids=[2, 2, 3]),
                Post(3, author_id=3, editor_id=1),
                Post(4, author_id=4, editor_id=None, tag_ids=[]),
            ]
        )


@pytest.fixture
def blog(counting: CountingBackend) -> Blog:
    """The blog on the counted backend, with the set-up calls forgotten."""
    made = Blog(counting)
    counting.calls.clear()
    return made


def test_load_related_reads_each_referenced_record_once_in_one_call(
    blog: Blog, counting: CountingBackend
) -> None:
    """Duplicates collapse, None records and references are skipped: exactly one get_many."""
    page = blog.posts.get_many([1, 2, 3, 4, 99])
    assert page[-1] is None
    counting.calls.clear()
    authors = blog.posts.load_related(page + page, "author_id", blog.users)
    assert counting.calls == ["get_many"]
    assert authors == {1: User(1, "Ann", 1), 3: User(3, "Cy", 1), 4: User(4, "Di")}
    for post in page:
        if post is not None:
            assert authors[post.author_id].id == post.author_id


def test_several_fields_to_one_repository_cost_one_call(
    blog: Blog, counting: CountingBackend
) -> None:
    """author_id and the optional editor_id, both to users, are read in one get_many."""
    page = [blog.posts.get(pk) for pk in (1, 3, 4)]
    counting.calls.clear()
    people = blog.posts.load_related(page, ["author_id", "editor_id"], blog.users)
    assert counting.calls == ["get_many"]
    assert sorted(people) == [1, 2, 3, 4]
    assert people[2] == User(2, "Bob", 2)


def test_list_references_load_every_element_once(blog: Blog, counting: CountingBackend) -> None:
    """A list of tag ids (with a repeat and an empty list) is one get_many of the distinct tags."""
    page = blog.posts.get_many([1, 2, 4])
    counting.calls.clear()
    tags = blog.posts.load_related(page, "tag_ids", blog.tags)
    assert counting.calls == ["get_many"]
    assert tags == {1: Tag(1, "python"), 2: Tag(2, "cache"), 3: Tag(3, "orm")}


def test_nothing_referred_to_costs_no_call(blog: Blog, counting: CountingBackend) -> None:
    """An empty batch, or one whose references are all None, never reaches the backend."""
    assert blog.posts.load_related([], "author_id", blog.users) == {}
    assert blog.posts.load_related([None], "author_id", blog.users) == {}
    di = blog.users.get(4)
    counting.calls.clear()
    assert blog.users.load_related([di], "company_id", blog.companies) == {}
    assert blog.posts.load_related([blog.posts.get(4)], "tag_ids", blog.tags) == {}
    assert counting.calls == ["get"]


def test_nested_preload_costs_one_round_trip_per_level(
    blog: Blog, counting: CountingBackend
) -> None:
    """post -> author -> company: the page, then one get_many per level, whatever the batch size."""
    page = blog.posts.get_many([1, 2, 3, 4])
    authors = blog.posts.load_related(page, "author_id", blog.users)
    companies = blog.users.load_related(authors.values(), "company_id", blog.companies)
    assert counting.calls == ["get_many", "get_many", "get_many"]
    post = page[2]
    assert post is not None
    author = authors[post.author_id]
    assert author.company_id is not None
    assert companies[author.company_id] == Company(1, "Acme")
    assert set(companies) == {1}  # Bob (company 2) wrote no post on this page


def test_nested_preload_with_missing_none_skips_the_holes(
    blog: Blog, counting: CountingBackend
) -> None:
    """The values of a missing="none" level (with Nones) feed the next level directly."""
    blog.posts.save(Post(5, author_id=42))
    page = blog.posts.get_many([5, 3])
    counting.calls.clear()
    authors = blog.posts.load_related(page, "author_id", blog.users, missing="none")
    assert authors == {42: None, 3: User(3, "Cy", 1)}
    companies = blog.users.load_related(authors.values(), "company_id", blog.companies)
    assert companies == {1: Company(1, "Acme")}
    assert counting.calls == ["get_many", "get_many"]


def test_dangling_reference_raises_naming_the_field_and_keys(
    blog: Blog, counting: CountingBackend
) -> None:
    """missing="raise" (the default): NotFound names the referring field, record and keys."""
    blog.posts.save_many([Post(6, author_id=40, editor_id=41), Post(7, author_id=1, tag_ids=[9])])
    page = blog.posts.get_many([6, 7])
    with pytest.raises(co.NotFound) as caught:
        blog.posts.load_related(page, ["author_id", "editor_id"], blog.users)
    error = caught.value
    assert error.keys == ["user:40", "user:41"]
    assert error.model is User
    assert error.field == "author_id"
    assert "Post.author_id -> 'user:40' (first of record 'post:6')" in str(error)
    assert "Post.editor_id -> 'user:41'" in str(error)
    assert "missing='none'" in str(error)
    with pytest.raises(co.NotFound, match=r"Post.tag_ids -> 'tag:9'"):
        blog.posts.load_related(page, "tag_ids", blog.tags, missing="raise")


def test_dangling_reference_maps_to_none_when_asked(blog: Blog) -> None:
    """missing="none": the dangling key is in the result, mapped to None; the others load."""
    blog.posts.save(Post(8, author_id=1, tag_ids=[3, 77]))
    tags = blog.posts.load_related([blog.posts.get(8)], "tag_ids", blog.tags, missing="none")
    assert tags == {3: Tag(3, "orm"), 77: None}


def test_self_reference_walks_up_one_level_per_call(counting: CountingBackend) -> None:
    """Employee.manager_id -> Employee, named by string in its own body: one call per level."""
    staff = co.Repository(Employee, backend=counting)
    staff.create_many(
        [
            Employee(1, "CEO"),
            Employee(2, "CTO", manager_id=1),
            Employee(3, "Dev", manager_id=2),
            Employee(4, "Ops", manager_id=2),
        ]
    )
    counting.calls.clear()
    level = [r for r in staff.get_many([3, 4]) if r is not None]
    chain: list[list[str]] = []
    while level:
        managers = staff.load_related(level, "manager_id", staff)
        level = list(managers.values())
        chain.append([m.name for m in level])
    assert chain == [["CTO"], ["CEO"], []]
    assert counting.calls == ["get_many", "get_many", "get_many"]


def test_a_cycle_of_references_resolves_both_ways(counting: CountingBackend) -> None:
    """Author -> Book by name and Book -> Author by class both load."""
    authors = co.Repository(Author, backend=counting)
    books = co.Repository(Book, backend=counting)
    authors.create(Author(1, best_book_id=10))
    books.create(Book(10, author_id=1))
    assert authors.load_related([authors.get(1)], "best_book_id", books) == {
        10: Book(10, author_id=1)
    }
    assert books.load_related([books.get(10)], "author_id", authors) == {
        1: Author(1, best_book_id=10)
    }


def test_composite_key_references_are_tuples(counting: CountingBackend) -> None:
    """A Ref to a composite key holds a tuple of its parts; a list of tuples holds several."""
    settings = co.Repository(Setting, backend=counting)
    profiles = co.Repository(Profile, backend=counting)
    settings.create_many([Setting(1, "theme", "dark"), Setting(1, "lang", "fr")])
    profiles.create_many(
        [
            Profile(1, theme=(1, "theme"), extras=[(1, "lang"), (1, "theme")]),
            Profile(2),
        ]
    )
    page = profiles.get_many([1, 2])
    counting.calls.clear()
    found = profiles.load_related(page, ["theme", "extras"], settings)
    assert counting.calls == ["get_many"]
    assert found == {
        (1, "theme"): Setting(1, "theme", "dark"),
        (1, "lang"): Setting(1, "lang", "fr"),
    }
    first = page[0]
    assert first is not None
    assert first.theme is not None
    assert found[first.theme].value == "dark"


def test_a_hand_built_list_composite_reference_still_works() -> None:
    """A composite reference given as a list (not a tuple) keys the result by the tuple."""
    settings = co.Repository(Setting)
    profiles = co.Repository(Profile)
    settings.create(Setting(2, "theme", "light"))
    profile = Profile(3, theme=[2, "theme"])  # type: ignore[arg-type]
    twin = Profile(4, theme=[2, "theme"])  # type: ignore[arg-type]
    assert profiles.load_related([profile, twin], "theme", settings) == {
        (2, "theme"): Setting(2, "theme", "light")
    }
    odd = Profile(5, theme={"user_id": 2})  # type: ignore[arg-type]
    with pytest.raises(co.ValidationError, match=r"Profile.theme of record 'profile:5' holds"):
        profiles.load_related([odd], "theme", settings)


def test_redis_sends_one_mget_per_level(redis_server: RedisServer) -> None:
    """On a real Redis, the two-level preload is exactly three MGETs and no other read."""
    backend = co.RedisBackend.from_url(redis_server.url)
    try:
        backend.client.flushdb()
        blog = Blog(backend)
        backend.client.config_resetstat()
        page = blog.posts.get_many(list(range(1, 5)))
        authors = blog.posts.load_related(page, ["author_id", "editor_id"], blog.users)
        blog.users.load_related(authors.values(), "company_id", blog.companies)
        stats = backend.client.info("commandstats")
        assert stats["cmdstat_mget"]["calls"] == 3
        assert "cmdstat_get" not in stats
    finally:
        backend.close()


# -- errors ----------------------------------------------------------------------


def test_unknown_field_is_a_configuration_error() -> None:
    """A name that is no field of the model says so and lists the fields."""
    blog = Blog(co.MemoryBackend())
    with pytest.raises(co.ConfigurationError, match=r"Post has no field 'writer_id'") as caught:
        blog.posts.load_related([], "writer_id", blog.users)
    assert caught.value.model is Post
    assert caught.value.field == "writer_id"
    assert "author_id" in str(caught.value)


def test_a_field_that_is_not_a_reference_is_a_configuration_error() -> None:
    """A plain field is rejected, and the message lists the model's reference fields."""
    blog = Blog(co.MemoryBackend())
    with pytest.raises(co.ConfigurationError, match=r"Post.id is not a reference") as caught:
        blog.posts.load_related([], "id", blog.users)
    assert "author_id, editor_id, tag_ids" in str(caught.value)
    with pytest.raises(co.ConfigurationError, match=r"reference fields of Company: none"):
        blog.companies.load_related([], "name", blog.users)


def test_a_reference_to_another_model_is_a_configuration_error() -> None:
    """Loading tag_ids (Tag) from the users repository names both models."""
    blog = Blog(co.MemoryBackend())
    with pytest.raises(
        co.ConfigurationError,
        match=r"Post.tag_ids refers to Tag, but the repository given stores User",
    ):
        blog.posts.load_related(blog.posts.get_many([1]), "tag_ids", blog.users)


def test_bad_arguments_are_configuration_errors() -> None:
    """An unknown missing policy, no field names, or a non-str name."""
    blog = Blog(co.MemoryBackend())
    with pytest.raises(co.ConfigurationError, match=r"missing must be 'raise' or 'none'"):
        blog.posts.load_related([], "author_id", blog.users, missing="skip")  # type: ignore[call-overload]
    with pytest.raises(co.ConfigurationError, match=r"needs a field name"):
        blog.posts.load_related([], [], blog.users)
    with pytest.raises(co.ConfigurationError, match=r"must be a str, not 3"):
        blog.posts.load_related([], [3], blog.users)  # type: ignore[list-item]


def test_a_record_of_another_model_is_a_validation_error() -> None:
    """A foreign object in the batch is refused before any read."""
    blog = Blog(co.MemoryBackend())
    with pytest.raises(co.ValidationError, match=r"Post repository got User"):
        blog.posts.load_related([blog.users.get(1)], "author_id", blog.users)  # type: ignore[list-item]


def test_a_reference_that_is_no_valid_key_names_field_and_record() -> None:
    """A value that cannot be the target's key is a ValidationError naming Post.author_id."""
    blog = Blog(co.MemoryBackend())
    bad = Post(9, author_id="x")  # type: ignore[arg-type]
    with pytest.raises(co.ValidationError) as caught:
        blog.posts.load_related([bad], "author_id", blog.users)
    assert "Post.author_id of record 'post:9' holds 'x'" in str(caught.value)
    assert caught.value.path == "author_id"
    assert caught.value.model is Post


def test_a_bad_reference_in_a_record_without_a_key_still_names_the_field() -> None:
    """If the record's own key cannot be rendered either, the message still names the field."""
    blog = Blog(co.MemoryBackend())
    bad = Post(id="?", author_id="x")  # type: ignore[arg-type]
    with pytest.raises(co.ValidationError, match=r"^Post.author_id holds 'x'"):
        blog.posts.load_related([bad], "author_id", blog.users)


def test_ref_needs_a_model_or_a_name() -> None:
    """Ref(...) of something else fails where the model is defined."""
    with pytest.raises(co.ModelDefinitionError, match=r"needs a dataclass model or its name"):
        co.Ref(int)
    with pytest.raises(co.ModelDefinitionError, match=r"not ''"):
        co.Ref(" ")
    assert repr(co.Ref(User)) == "Ref(User)"
    assert repr(co.Ref("User")) == "Ref('User')"
    assert co.Ref(User) == co.Ref(User)
    assert hash(co.Ref("User")) == hash(co.Ref("User"))


def test_two_refs_on_one_field_are_a_model_definition_error() -> None:
    """One field refers to one model."""

    @dataclasses.dataclass
    class Twice:
        id: Annotated[int, co.Field(primary_key=True)]
        other: Annotated[int, co.Ref(User), co.Ref(Company)] = 0

    twice = co.Repository(Twice)
    with pytest.raises(co.ModelDefinitionError, match=r"Twice.other: has 2 Ref"):
        twice.load_related([], "other", co.Repository(User))


def test_a_mapping_is_not_a_reference_shape() -> None:
    """A dict field cannot be a reference field."""

    @dataclasses.dataclass
    class Mapped:
        id: Annotated[int, co.Field(primary_key=True)]
        refs: Annotated[dict[str, int], co.Ref(User)] = dataclasses.field(default_factory=dict)

    mapped = co.Repository(Mapped)
    with pytest.raises(co.ModelDefinitionError, match=r"Mapped.refs: a Ref field holds a key"):
        mapped.load_related([], "refs", co.Repository(User))


def test_composite_targets_need_tuples_of_the_right_length() -> None:
    """A Ref to a composite key must be a tuple of as many parts; a single key must not be."""

    @dataclasses.dataclass
    class Loose:
        id: Annotated[int, co.Field(primary_key=True)]
        one: Annotated[int, co.Ref(Setting)] = 0
        short: Annotated[tuple[int], co.Ref(Setting)] = (0,)
        pair: Annotated[tuple[int, int], co.Ref(User)] = (0, 0)

    loose = co.Repository(Loose)
    settings = co.Repository(Setting)
    with pytest.raises(co.ModelDefinitionError, match=r"Loose.one: Setting has a composite"):
        loose.load_related([], "one", settings)
    with pytest.raises(co.ModelDefinitionError, match=r"is a tuple of 2 key parts, not tuple"):
        loose.load_related([], "short", settings)
    with pytest.raises(co.ModelDefinitionError, match=r"User has a single-field primary key"):
        loose.load_related([], "pair", co.Repository(User))


def test_an_unknown_ref_name_is_a_model_definition_error() -> None:
    """Ref("Nobody") names no class: the error names the field, the name and the target."""

    @dataclasses.dataclass
    class Lost:
        id: Annotated[int, co.Field(primary_key=True)]
        who: Annotated[int, co.Ref("Nobody")] = 0

    with pytest.raises(co.ModelDefinitionError, match=r"Lost.who: Ref\('Nobody'\) names no"):
        co.Repository(Lost).load_related([], "who", co.Repository(User))


def test_ref_by_dotted_name_and_by_a_local_model_name() -> None:
    """Ref("module.Model") resolves through sys.modules; a local model matches by name."""

    @dataclasses.dataclass
    class Local:
        id: Annotated[int, co.Field(primary_key=True)]

    @dataclasses.dataclass
    class Pointer:
        id: Annotated[int, co.Field(primary_key=True)]
        user: Annotated[int, co.Ref("tests.test_refs.User")] = 0
        local: Annotated[int, co.Ref("Local")] = 0

    users = co.Repository(User)
    locals_ = co.Repository(Local)
    users.create(User(1, "Ann"))
    locals_.create(Local(5))
    pointers = co.Repository(Pointer)
    record = Pointer(1, user=1, local=5)
    assert pointers.load_related([record], "user", users) == {1: User(1, "Ann")}
    assert pointers.load_related([record], "local", locals_) == {5: Local(5)}


def test_markers_are_read_once_per_model() -> None:
    """The second look-up of a model's references is the cached object."""
    assert _refs.model_refs(Post) is _refs.model_refs(Post)
    assert set(_refs.model_refs(Post).fields) == {"author_id", "editor_id", "tag_ids"}
    assert _refs.model_refs(Setting).key_arity == 2


_FUTURE_SOURCE = """
import dataclasses
from typing import Annotated
import cacheorm as co


def build(backend):
    @dataclasses.dataclass
    class Firm:
        id: Annotated[int, co.Field(primary_key=True)]

    @dataclasses.dataclass
    class Staff:
        id: Annotated[int, co.Field(primary_key=True)]
        firm_id: Annotated[int, co.Ref(Firm)]
        boss_id: Annotated[int | None, co.Ref(Staff)] = None

    firms = co.Repository(Firm, backend=backend)
    staff = co.Repository(Staff, backend=backend)
    firms.create(Firm(1))
    staff.create_many([Staff(1, 1), Staff(2, 1, boss_id=1)])
    page = staff.get_many([1, 2])
    return (
        staff.load_related(page, "firm_id", firms),
        staff.load_related(page, "boss_id", staff),
        staff.load_related(page, "boss_id", staff),
    )
"""


def test_local_models_under_future_annotations(backend: co.Backend) -> None:
    """With PEP 563, ``Ref(Staff)`` in Staff's own body and ``Ref(Firm)`` of a local class work."""
    module = types.ModuleType("cacheorm_refs_future")
    sys.modules[module.__name__] = module
    try:
        code = compile(
            _FUTURE_SOURCE, "<future>", "exec", flags=__future__.annotations.compiler_flag
        )
        exec(code, vars(module))
        firms, bosses, again = module.build(backend)
    finally:
        del sys.modules[module.__name__]
    assert [f.id for f in firms.values()] == [1]
    assert list(bosses) == [1]
    assert again == bosses


def test_an_annotation_that_cannot_be_evaluated_is_reported_when_used() -> None:
    """A reference field whose string annotation names nothing visible is a clear error."""

    @dataclasses.dataclass
    class Broken:
        id: Annotated[int, co.Field(primary_key=True)]
        ghost: "Annotated[int, co.Ref(Phantom)]" = 0  # type: ignore[name-defined]  # noqa: F821

    repo = co.Repository(Company)
    with pytest.raises(co.ModelDefinitionError, match=r"Broken.ghost: cannot evaluate"):
        _refs.resolve_field(Broken, "ghost", Company)
    assert "ghost" in _refs.model_refs(Broken).unresolved
    assert _refs.model_refs(Broken) is not _refs.model_refs(Broken)  # not cached: may resolve later
    with pytest.raises(co.ConfigurationError, match=r"Broken.id is not a reference"):
        _refs.resolve_field(Broken, "id", repo.model)


def test_load_related_is_observed_as_one_get_many() -> None:
    """With hooks on the target repository, the preload shows as one get_many event."""
    events: list[co.OperationEvent] = []
    backend = co.MemoryBackend()
    users = co.Repository(User, backend=backend, hooks=[events.append])
    posts = co.Repository(Post, backend=backend)
    users.create(User(1, "Ann"))
    posts.create(Post(1, author_id=1))
    events.clear()
    posts.load_related(posts.get_many([1]), "author_id", users)
    assert [e.operation for e in events] == ["get_many"]


def test_tuples_sets_and_lists_with_holes_are_several_references(backend: co.Backend) -> None:
    """tuple[int, ...], frozenset[int], list[int | None] hold several keys; or Ref on the item."""

    @dataclasses.dataclass
    class Shelf:
        id: Annotated[int, co.Field(primary_key=True)]
        row: Annotated[tuple[int, ...], co.Ref(Tag)] = ()
        bag: Annotated[frozenset[int], co.Ref(Tag)] = frozenset()
        holes: Annotated[list[int | None], co.Ref(Tag)] = dataclasses.field(default_factory=list)
        inner: list[Annotated[int, co.Ref(Tag)]] = dataclasses.field(default_factory=list)

    tags = co.Repository(Tag, backend=backend)
    shelves = co.Repository(Shelf, backend=backend)
    tags.create_many([Tag(1, "a"), Tag(2, "b"), Tag(3, "c")])
    shelves.create(Shelf(1, row=(1, 2), bag=frozenset({2, 3}), holes=[None, 3], inner=[1]))
    page = shelves.get_many([1])
    assert set(shelves.load_related(page, "row", tags)) == {1, 2}
    assert set(shelves.load_related(page, "bag", tags)) == {2, 3}
    assert shelves.load_related(page, "holes", tags) == {3: Tag(3, "c")}
    assert shelves.load_related(page, "inner", tags) == {1: Tag(1, "a")}
    assert _refs.model_refs(Shelf).fields["holes"].element is int
    assert _refs.model_refs(Shelf).fields["inner"].element is int


def test_only_optional_unions_are_unwrapped() -> None:
    """`X | None` gives X; a wider union is left alone (the schema compiler rejects it)."""
    assert _refs._without_none(int | None) is int
    assert _refs._without_none(int | str) == int | str


def test_the_plan_does_no_io_and_finish_needs_only_the_reply(
    blog: Blog, counting: CountingBackend
) -> None:
    """plan_related reads nothing; finish() turns one get_many reply into the result.

    This split is what an async repository reuses: only the get_many is awaited.
    """
    page = blog.posts.get_many([1, 2, 3])
    counting.calls.clear()
    plan = _refs.plan_related(blog.posts, page, ["author_id", "editor_id"], blog.users, "raise")
    assert counting.calls == []
    assert plan.pks == [1, 2, 3]
    reply = blog.users.get_many(plan.pks)
    assert plan.finish(reply) == {1: reply[0], 2: reply[1], 3: reply[2]}
    with pytest.raises(co.NotFound, match=r"Post.editor_id -> 'user:2'"):
        plan.finish([reply[0], None, reply[2]])


def test_a_namesake_model_is_told_apart_by_module() -> None:
    """A Ref to User given a repository of another class named User names both modules."""

    @dataclasses.dataclass
    class User:  # shadows the module-level User
        id: Annotated[int, co.Field(primary_key=True)]

    blog = Blog(co.MemoryBackend())
    with pytest.raises(
        co.ConfigurationError,
        match=r"Post.author_id refers to tests.test_refs.User, but the repository given stores "
        r"tests.test_refs.test_a_namesake_model_is_told_apart_by_module.<locals>.User",
    ):
        blog.posts.load_related([], "author_id", co.Repository(User))
