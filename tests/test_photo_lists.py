from pathlib import Path

import pytest

from vesselseg.photo_lists import PhotoListError, is_photo_list, read_photo_list


def _write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def test_a_csv_gives_paths_relative_to_itself_with_ids_and_pixel_sizes(tmp_path):
    listed = read_photo_list(_write(tmp_path / "cohort.csv",
                                    "id,path,pixel_size_um,notes\n"
                                    "p1,photos/a.jpg,6.5,left eye\n"
                                    "site2/p2,/data/b.png,,\n"))
    assert listed.images == [tmp_path / "photos" / "a.jpg", Path("/data/b.png")]
    assert listed.ids == {tmp_path / "photos" / "a.jpg": "p1", Path("/data/b.png"): "site2/p2"}
    assert listed.pixel_sizes == {tmp_path / "photos" / "a.jpg": 6.5}  # empty: the flag's


def test_the_path_column_is_path_else_image_else_named(tmp_path):
    images = read_photo_list(_write(tmp_path / "a.csv", "image,eye\nx.png,left\n"))
    assert images.images == [tmp_path / "x.png"] and images.ids == {}
    named = read_photo_list(_write(tmp_path / "b.csv", "file\ny.png\n"), path_column="file")
    assert named.images == [tmp_path / "y.png"]


@pytest.mark.parametrize("text, message", [
    ("file,id\nx.png,1\n", "line 1: no 'path' or 'image' column among file, id"),
    ("", "line 1: empty file"),
    ("path,id\na.png,p1\nb.png,p2\nc.png,p1\n", "line 4: id 'p1' is also on line 2"),
    ("path\na.png\n./a.png\n", "line 3:"),
    ("path,id\na.png,../escape\n", "line 2: id '../escape' cannot name output files"),
    ("path,id\na.png,/root/x\n", "line 2: id '/root/x'"),
    ("path,id\na.png,.hidden\n", "line 2: id '.hidden'"),
    ("path,id\na.png,\n", "line 2: id ''"),
    ("path,pixel_size_um\na.png,-3\n", "line 2: pixel_size_um '-3' is not a positive number"),
    ("path,pixel_size_um\na.png,wide\n", "line 2: pixel_size_um 'wide'"),
    ("path\n\"\"\n", "line 2: empty 'path' cell"),
    ("path\na.png,extra\n", "line 2: more cells than the header"),
    ("path\n", "lists no photos"),
])
def test_a_bad_csv_is_an_error_naming_the_file_and_line(tmp_path, text, message):
    path = _write(tmp_path / "cohort.csv", text)
    with pytest.raises(PhotoListError) as error:
        read_photo_list(path)
    assert str(error.value).startswith(str(path)) and message in str(error.value)
    assert error.value.exit_code == 1  # eval turns it into 3: nothing processed


def test_a_csv_that_is_not_text_or_not_there_is_an_error(tmp_path):
    binary = tmp_path / "photo.csv"
    binary.write_bytes(b"\xff\xd8\xff\xe0 a jpeg renamed")
    with pytest.raises(PhotoListError, match="photo.csv: not UTF-8"):
        read_photo_list(binary)
    with pytest.raises(PhotoListError, match="missing.txt: cannot read"):
        read_photo_list(tmp_path / "missing.txt")


def test_a_text_list_has_one_path_a_line(tmp_path):
    listed = read_photo_list(_write(tmp_path / "list.txt",
                                    "# visit 1\nphotos/a.jpg\n\n  b.png  \n/abs/c.tif\n"))
    assert listed.images == [tmp_path / "photos" / "a.jpg", tmp_path / "b.png",
                             Path("/abs/c.tif")]
    with pytest.raises(PhotoListError, match="line 3: .* is also on line 1"):
        read_photo_list(_write(tmp_path / "twice.txt", "a.png\n\na.png\n"))


def test_lists_are_told_from_photos_by_suffix():
    assert is_photo_list("cohort.CSV") and is_photo_list("a/list.txt")
    assert not is_photo_list("photo.png") and not is_photo_list("notes.md")
